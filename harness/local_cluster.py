"""A local three-node RabbitMQ cluster on 127.0.0.1:5681-5683: ``python -m harness.local_cluster start|stop|status``.

``make cluster`` runs ``start``: it starts every node that is not running (or whose app was
stopped), joins to the first node any node that is not in the cluster yet, and returns once
every node has finished booting. Run again with a node down, it starts that node. ``make
cluster-stop`` runs ``stop``: it stops the three nodes and removes their data.

Each node is a ``rabbitmq-server`` of its own, named ``clusterN@localhost``, with its own
AMQP port, Erlang distribution port, data, logs, enabled-plugins file, ``rabbitmq.conf`` and
``rabbitmq-env.conf``: the system's ``/etc/rabbitmq`` files name the machine's default node
(``rabbit@localhost`` on 5672) and must not apply. Nothing here ever addresses that node:
every command names one of :data:`NODES` with ``-n``, every node is checked against the
default's name and port when this module is imported, and a node is only ever killed by the
pid its own pid file gives, after checking that the process is that node.

Started as root, the nodes and ``rabbitmqctl`` run as the ``rabbitmq`` user, so they share its
Erlang cookie (``/var/lib/rabbitmq/.erlang.cookie``) with the command-line tools. Started as
another user, they run as that user with a cookie of their own in the cluster's folder.

Data lives in ``CLUSTER_DIR`` (default ``/tmp/rabbitmq-cluster``): outside the repository,
because the ``rabbitmq`` user must be able to write there.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

RABBITMQ_BIN = Path(os.environ.get("RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
CLUSTER_DIR = Path(os.environ.get("CLUSTER_DIR", "/tmp/rabbitmq-cluster"))  # noqa: S108 - see the module's docstring
HOST = "127.0.0.1"
BOOT_TIMEOUT_S = 180  # a node boots in ~20 s alone; three at once on two cores, and a restart waiting for its peers, take longer
DEFAULT_NODE_NAME, DEFAULT_NODE_PORT = "rabbit", 5672  # the machine's own node: never ours


@dataclass(frozen=True)
class Node:
    name: str  # the part before @localhost
    port: int  # AMQP
    dist_port: int  # Erlang distribution

    @property
    def nodename(self) -> str:
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}/"

    @property
    def dir(self) -> Path:
        return CLUSTER_DIR / self.name


NODES = (Node("cluster1", 5681, 25681), Node("cluster2", 5682, 25682), Node("cluster3", 5683, 25683))
SEED = NODES[0]  # the node the others join
_launched: dict[Node, int] = {}  # pid of each server script this process started, to notice one that dies at boot
URLS = ",".join(node.url for node in NODES)  # AMQP_URL for services on the cluster


class ClusterError(RuntimeError):
    """The cluster could not be brought to the asked state; the message says why and where to look."""


class NotAClusterNode(ClusterError):
    """A command would address a node that is not one of this cluster's: the machine's own broker, say.
    Raised, not asserted: ``python -O`` drops asserts, and this guard is the module's promise."""


def guard(node: Node) -> Node:
    """``node`` if it is one of ours and touches nothing of the default node's (name, AMQP port, the
    distribution port RabbitMQ derives from it); else NotAClusterNode."""
    if node not in NODES:
        raise NotAClusterNode(f"{node} is not a node of the local cluster ({', '.join(n.name for n in NODES)})")
    if (
        node.name == DEFAULT_NODE_NAME
        or DEFAULT_NODE_PORT in (node.port, node.dist_port)
        or node.dist_port == DEFAULT_NODE_PORT + 20000
    ):
        raise NotAClusterNode(f"{node} would touch the machine's own broker ({DEFAULT_NODE_NAME} on {DEFAULT_NODE_PORT})")
    return node


for _node in NODES:  # checked when the module is imported: none of ours is the default node
    guard(_node)


def node(name: str) -> Node:
    """One of the cluster's nodes by name (``cluster2`` or ``cluster2@localhost``); nothing else."""
    for candidate in NODES:
        if name in (candidate.name, candidate.nodename):
            return candidate
    raise ClusterError(f"{name!r} is not a node of the local cluster ({', '.join(n.nodename for n in NODES)})")


# -- who runs the nodes -------------------------------------------------------------------


def _run_as() -> pwd.struct_passwd | None:
    """The account the nodes and the CLI run as: ``rabbitmq`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("rabbitmq")
    except KeyError:
        raise ClusterError(
            "running as root, but there is no 'rabbitmq' user: is the rabbitmq-server package installed?"
        ) from None


def _home() -> Path:
    """HOME of the nodes and the CLI: where the Erlang cookie they share is."""
    account = _run_as()
    if account is not None:
        return Path(account.pw_dir)
    me = pwd.getpwuid(os.geteuid())
    if me.pw_name == "rabbitmq":
        return Path(me.pw_dir)
    home = CLUSTER_DIR / "home"  # another user: a cookie of the cluster's own
    cookie = home / ".erlang.cookie"
    if not cookie.exists():
        home.mkdir(parents=True, exist_ok=True)
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
    return home


def _ids() -> tuple[int | None, int | None, list[int] | None]:
    """user, group and extra_groups for subprocess: the ``rabbitmq`` user's when we are root, else unchanged (None)."""
    account = _run_as()
    if account is None:
        return None, None, None
    return account.pw_uid, account.pw_gid, []


def _chown(paths: Iterable[Path]) -> None:
    account = _run_as()
    if account is None:
        return
    for path in paths:
        os.chown(path, account.pw_uid, account.pw_gid)


# -- files --------------------------------------------------------------------------------


def _env(target: Node) -> dict[str, str]:
    """The environment of ``target``'s server and of the CLI commands that address it."""
    keep = ("PATH", "LANG", "LC_ALL", "TERM")
    return {
        **{k: v for k, v in os.environ.items() if k in keep},
        "HOME": str(_home()),
        "RABBITMQ_NODENAME": target.nodename,
        "RABBITMQ_NODE_IP_ADDRESS": HOST,
        "RABBITMQ_NODE_PORT": str(target.port),
        "RABBITMQ_DIST_PORT": str(target.dist_port),
        "RABBITMQ_MNESIA_BASE": str(target.dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(target.dir / "log"),
        "RABBITMQ_PID_FILE": str(target.dir / "pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(target.dir / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(target.dir / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(target.dir / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(target.dir / "rabbitmq-env.conf"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }


def _write_files(target: Node) -> None:
    """The node's folder and its own configuration files (rewritten each start: they are ours)."""
    for folder in (CLUSTER_DIR, target.dir, target.dir / "mnesia", target.dir / "log"):
        folder.mkdir(parents=True, exist_ok=True)
    files = {
        # The server reads this, not /etc/rabbitmq/rabbitmq.conf (which sets 5672).
        "rabbitmq.conf": (
            f"listeners.tcp.local = {HOST}:{target.port}\n"
            "loopback_users.guest = true\n"  # guest only from this machine, as on the default node
            "log.file.level = info\n"
            # A fresh node joins the seed while it boots (the seed itself starts a new cluster).
            + (
                ""
                if target is SEED
                else "cluster_formation.peer_discovery_backend = classic_config\n"
                f"cluster_formation.classic_config.nodes.1 = {SEED.nodename}\n"
            )
        ),
        # Sourced by the start script instead of /etc/rabbitmq/rabbitmq-env.conf (which names rabbit@localhost).
        "rabbitmq-env.conf": (
            f"NODENAME={target.nodename}\n"
            f"NODE_PORT={target.port}\n"
            "ERL_EPMD_ADDRESS=127.0.0.1\n"
            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n'
        ),
        "enabled_plugins": "[].\n",
    }
    for name, text in files.items():
        (target.dir / name).write_text(text)
    startup_log = target.dir / "log" / "startup.log"
    startup_log.touch()
    _chown([CLUSTER_DIR, target.dir, target.dir / "mnesia", target.dir / "log", startup_log, *(target.dir / n for n in files)])


# -- one node -----------------------------------------------------------------------------


def ctl(target: Node, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``rabbitmqctl -n <target> ...`` (as the nodes' user). Only ever addresses a cluster node."""
    command = [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", guard(target).nodename, *args]
    user, group, extra_groups = _ids()
    result = subprocess.run(
        command,
        env=_env(target),
        cwd=str(_home()),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        user=user,
        group=group,
        extra_groups=extra_groups,
    )
    if check and result.returncode != 0:
        said = (result.stderr or result.stdout).strip()[-1500:]
        raise ClusterError(f"rabbitmqctl -n {target.nodename} {' '.join(args)} failed: {said}")
    return result


def pid(target: Node) -> int | None:
    """The pid of ``target``'s Erlang VM when it runs, read from its pid file and checked to be that node."""
    try:
        number = int((target.dir / "pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        environ = Path(f"/proc/{number}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    # Our nodes carry their name and data folder in their environment (the default node does not).
    ours = f"RABBITMQ_NODENAME={target.nodename}".encode() in environ
    here = f"RABBITMQ_MNESIA_BASE={target.dir / 'mnesia'}".encode() in environ
    return number if ours and here else None


def _alive(number: int) -> bool:
    """Whether process ``number`` still runs (a node's pid file goes early in its shutdown)."""
    try:
        state = Path(f"/proc/{number}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def listening(target: Node) -> bool:
    """Whether ``target`` accepts AMQP connections (its app is running: the listener opens last at boot)."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((HOST, target.port)) == 0


def start_node(target: Node) -> None:
    """Start ``target``'s server in the background (it outlives this process); returns at once."""
    if shutil.which(str(RABBITMQ_BIN / "rabbitmq-server")) is None:
        raise ClusterError(f"{RABBITMQ_BIN / 'rabbitmq-server'} not found: sudo apt-get install -y rabbitmq-server")
    for port in (target.port, target.dist_port):
        if _port_taken(port):
            raise ClusterError(f"port {port} is taken by another program: {target.nodename} cannot start")
    _write_files(target)
    user, group, extra_groups = _ids()
    # Through a shell that leaves it in the background: the server is nobody's child here (it
    # outlives this process), and the shell says its pid, to notice a server that dies at boot.
    launch = 'exec "$0" </dev/null >>log/startup.log 2>&1 & echo $!'
    launched = subprocess.run(
        ["/bin/sh", "-c", launch, str(RABBITMQ_BIN / "rabbitmq-server")],
        env=_env(target),
        cwd=str(target.dir),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        start_new_session=True,  # not killed with the terminal or the test run that started it
        user=user,
        group=group,
        extra_groups=extra_groups,
    )
    _launched[target] = int(launched.stdout.strip())


def _log_tail(target: Node) -> str:
    try:
        text = (target.dir / "log" / "startup.log").read_text(errors="replace")
    except OSError:
        return f"see {target.dir / 'log'}"
    return text.strip()[-1500:] + f" (more in {target.dir / 'log'})"


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
        return False


def await_startup(target: Node, timeout: float = BOOT_TIMEOUT_S) -> None:
    """Wait until ``target`` has booted (``rabbitmqctl await_startup``)."""
    deadline = time.monotonic() + timeout
    while pid(target) is None:  # the pid file is written early in the boot
        launched = _launched.get(target)
        if launched is not None and not _alive(launched):
            raise ClusterError(f"{target.nodename} exited while starting: {_log_tail(target)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{target.nodename} did not start: see {target.dir / 'log'}")
        time.sleep(0.5)
    remaining = max(5, int(deadline - time.monotonic()))
    result = ctl(target, "await_startup", "--timeout", str(remaining), timeout=remaining + 30, check=False)
    if result.returncode != 0:
        said = result.stderr.strip()[-500:]
        raise ClusterError(f"{target.nodename} did not finish booting within {timeout:.0f}s: {said}; see {target.dir / 'log'}")


def kill(target: Node, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
    """Send ``sig`` (SIGKILL by default) to ``target``'s VM, and wait until it is gone."""
    signal_nodes([target], sig, timeout)


def signal_nodes(targets: Sequence[Node], sig: int, timeout: float = 30) -> None:
    """Send ``sig`` to each running node of ``targets`` at once; wait until they are gone
    (SIGKILL for one still there after ``timeout``). SIGTERM is a clean shutdown (init:stop)."""
    sent = {}
    for target in targets:
        if (number := pid(target)) is not None:
            os.kill(number, sig)
            sent[target] = number
    deadline = time.monotonic() + timeout
    for target, number in sent.items():
        while _alive(number):
            if time.monotonic() > deadline:
                if sig == signal.SIGKILL:
                    raise ClusterError(f"{target.nodename} (pid {number}) still runs {timeout:.0f} s after SIGKILL")
                os.kill(number, signal.SIGKILL)
                deadline += 30
                sig = signal.SIGKILL
            time.sleep(0.1)
        while listening(target) and time.monotonic() < deadline:
            time.sleep(0.1)


def stop_app(target: Node) -> None:
    ctl(target, "stop_app")


def start_app(target: Node) -> None:
    ctl(target, "start_app", timeout=BOOT_TIMEOUT_S)


def join(target: Node, seed: Node = SEED) -> None:
    """Make a fresh ``target`` a member of ``seed``'s cluster (it forgets its own data)."""
    ctl(target, "stop_app")
    ctl(target, "reset")
    ctl(target, "join_cluster", seed.nodename, timeout=BOOT_TIMEOUT_S)
    ctl(target, "start_app", timeout=BOOT_TIMEOUT_S)


def leaders(prefix: str = "") -> dict[str, str]:
    """The node leading each quorum queue whose name starts with ``prefix`` (asked of a running node)."""
    up = running()
    if not up:
        raise ClusterError("no node of the cluster is running")
    listed = ctl(up[0], "list_queues", "name", "type", "leader", "--formatter", "json").stdout
    rows = json.loads(listed)
    return {row["name"]: row["leader"] for row in rows if row["name"].startswith(prefix) and row["type"] == "quorum"}


# -- the cluster --------------------------------------------------------------------------


def running() -> list[Node]:
    """The nodes whose app accepts connections now."""
    return [n for n in NODES if pid(n) is not None and listening(n)]


def fresh(target: Node) -> bool:
    """Whether ``target`` has no data yet (never booted, or its data was removed)."""
    return not (target.dir / "mnesia" / target.nodename).exists()


def boot(targets: Sequence[Node]) -> None:
    """Start ``targets`` together and wait until each has booted."""
    for target in targets:
        start_node(target)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(NODES)) as pool:
        for waited in [pool.submit(await_startup, target) for target in targets]:
            waited.result()


def start(say: bool = False) -> list[Node]:
    """Bring up every node and the cluster they form; return the nodes that had to be started.

    Idempotent: a running node is left alone, a dead one is started, one whose app was stopped
    gets ``start_app``, and a node that is not in the seed's cluster yet joins it.

    Order: the seed and every node that already has data start together (members of a cluster
    that stopped wait for each other while booting, so they must); then the fresh nodes, which
    find the seed by peer discovery (``cluster_formation.classic_config``) and join it while
    booting, without a CLI call. A node that still is not a member gets ``join_cluster``.
    """
    down = [target for target in NODES if pid(target) is None]
    started = list(down)
    for target in NODES:
        if target in down or listening(target):
            continue
        # Its VM runs but takes no connections: it is booting, or its app was stopped.
        if ctl(target, "eval", "rabbit:is_booting().", check=False).stdout.strip() != "true":
            _say(say, f"{target.nodename}: its app was stopped; starting it")
            start_app(target)
            started.append(target)
    first = [target for target in down if target is SEED or not fresh(target)]
    then = [target for target in down if target not in first]
    for phase in (first, then):
        if phase:
            _say(say, f"starting {', '.join(n.nodename for n in phase)} (20-60 s)")
            boot(phase)
    for target in NODES:
        if target not in down and not listening(target):
            await_startup(target)  # one that was booting already
    in_cluster = set(json.loads(ctl(SEED, "cluster_status", "--formatter", "json").stdout).get("running_nodes", []))
    for target in NODES:
        if target.nodename not in in_cluster:
            _say(say, f"{target.nodename} is not in {SEED.nodename}'s cluster: it joins it")
            join(target)
    return started


def stop(remove_data: bool = True, say: bool = False) -> None:
    """Stop every node cleanly (SIGTERM, all at once; SIGKILL for one that does not stop within
    60 s); then remove the cluster's data unless ``remove_data`` is False (a full restart)."""
    up = [target for target in NODES if pid(target) is not None]
    if up:
        _say(say, f"stopping {', '.join(n.nodename for n in up)}")
        signal_nodes(up, signal.SIGTERM, timeout=60)
    if remove_data and CLUSTER_DIR.exists():
        _say(say, f"removing {CLUSTER_DIR}")
        shutil.rmtree(CLUSTER_DIR)


def status() -> dict[str, dict[str, object]]:
    """Each node's pid, whether it accepts connections, and its URL (no CLI call: instant)."""
    return {n.nodename: {"pid": pid(n), "accepting": listening(n), "url": n.url} for n in NODES}


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(f"cluster: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.local_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            began = time.monotonic()
            start(say=True)
            ports = f"{HOST}:{NODES[0].port}-{NODES[-1].port}"
            print(f"cluster: ready in {time.monotonic() - began:.0f}s; {len(NODES)} nodes on {ports}")
            print(f"cluster: AMQP_URL={URLS}")
        elif args.command == "stop":
            stop(say=True)
            print("cluster: stopped, data removed")
        else:
            for name, state in status().items():
                print(f"{name}: {'up' if state['accepting'] else 'down'} (pid {state['pid']}) {state['url']}")
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
