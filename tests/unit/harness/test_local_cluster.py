"""The local cluster's guards: it never addresses the machine's default node (rabbit@..., 5672),
and it only ever signals a process its own pid file names and that is that node. No node is
started here (tests/cluster starts the real cluster)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import local_cluster as cluster


@pytest.fixture
def cluster_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(cluster, "CLUSTER_DIR", tmp_path)
    return tmp_path


def test_no_node_is_the_default_node() -> None:
    for node in cluster.NODES:
        assert node.name != "rabbit" and 5672 not in (node.port, node.dist_port) and node.dist_port != 25672
    assert [node.port for node in cluster.NODES] == [5681, 5682, 5683]
    assert cluster.URLS.split(",") == [f"amqp://guest:guest@127.0.0.1:{port}/" for port in (5681, 5682, 5683)]


@pytest.mark.parametrize("name", ["rabbit", "rabbit@localhost", "cluster4", ""])
def test_only_the_clusters_nodes_can_be_named(name: str) -> None:
    with pytest.raises(cluster.ClusterError, match="not a node of the local cluster"):
        cluster.node(name)


def test_rabbitmqctl_refuses_any_other_node_before_running_anything() -> None:
    with pytest.raises(cluster.NotAClusterNode, match="not a node of the local cluster"):
        cluster.ctl(cluster.Node("rabbit", 5672, 25672), "stop_app")


def test_the_guard_holds_under_python_dash_o() -> None:
    """Asserts vanish under -O; the guard does not: a node like the default one is refused there too."""
    probe = (
        "from harness import local_cluster as c\n"
        "try:\n"
        "    c.ctl(c.Node('rabbit', 5672, 25672), 'stop_app')\n"
        "except c.NotAClusterNode as exc:\n"
        "    print('refused:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-O", "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.startswith("refused: ") and "not a node of the local cluster" in result.stdout


@pytest.mark.parametrize(
    ("node", "says"),
    [
        (cluster.Node("rabbit", 5699, 25699), "would touch the machine's own broker"),
        (cluster.Node("cluster9", 5672, 25699), "would touch the machine's own broker"),
        (cluster.Node("cluster9", 5699, 25672), "would touch the machine's own broker"),
    ],
)
def test_a_node_touching_the_default_ones_name_or_ports_is_refused(
    monkeypatch: pytest.MonkeyPatch, node: "cluster.Node", says: str
) -> None:
    monkeypatch.setattr(cluster, "NODES", (*cluster.NODES, node))  # even were it listed as one of ours
    with pytest.raises(cluster.NotAClusterNode, match=says):
        cluster.guard(node)


def test_a_node_has_its_own_files_none_of_etc_rabbitmq(cluster_dir: Path) -> None:
    node = cluster.NODES[1]
    cluster._write_files(node)
    env = cluster._env(node)
    assert env["RABBITMQ_NODENAME"] == "cluster2@localhost" and env["RABBITMQ_NODE_PORT"] == "5682"
    for name in ("MNESIA_BASE", "LOG_BASE", "PID_FILE", "ENABLED_PLUGINS_FILE", "CONFIG_FILE", "CONF_ENV_FILE"):
        assert env[f"RABBITMQ_{name}"].startswith(str(cluster_dir / "cluster2")), name
    assert "/etc/rabbitmq" not in " ".join(env.values())
    conf = (cluster_dir / "cluster2" / "rabbitmq.conf").read_text()
    assert "127.0.0.1:5682" in conf and "5672" not in conf
    assert "cluster1@localhost" in conf  # a fresh node finds the seed
    assert "NODENAME=cluster2@localhost" in (cluster_dir / "cluster2" / "rabbitmq-env.conf").read_text()


@pytest.mark.usefixtures("cluster_dir")
def test_a_pid_file_naming_a_process_that_is_not_the_node_is_ignored() -> None:
    node = cluster.NODES[0]
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        node.dir.mkdir(parents=True)
        (node.dir / "pid").write_text(str(bystander.pid))
        assert cluster.pid(node) is None
        cluster.kill(node, signal.SIGKILL)  # names nothing of ours: signals nothing
        cluster.stop(remove_data=False)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.usefixtures("cluster_dir")
def test_the_pid_of_a_process_that_is_the_node_is_taken() -> None:
    node = cluster.NODES[2]
    env = {**os.environ, "RABBITMQ_NODENAME": node.nodename, "RABBITMQ_MNESIA_BASE": str(node.dir / "mnesia")}
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        node.dir.mkdir(parents=True)
        (node.dir / "pid").write_text(str(stand_in.pid))
        assert cluster.pid(node) == stand_in.pid
    finally:
        stand_in.kill()
        stand_in.wait()
