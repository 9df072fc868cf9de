"""deploy/compose.yml for real: built, started, driven through its published ports, faulted.

One project for the module, its tests in order (each builds on the state the last left):
up and healthy, a burst into the bind-mounted CSV, kill -9 of each service, down then up,
the scale override, a missing logs folder, a logs folder the services' uid cannot write.
Every check counts every id ever published into the project: 0 lost, 0 duplicated,
0 unexpected, after each step.
Prints COMPOSE lines with the timings (make test-compose runs pytest -s).
"""

import functools
import math
import os
import time

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import wait_until
from services.common.metric_rows import METRIC_LOG_HEADER
from tests.compose.stack import ComposeStack, Container, timed
from tests.deploy_files import APP_SERVICES, CLUSTER_FILE, COMPOSE_FILE, SCALE_FILE

# Building cold (base images present) is about 2 minutes here; the engine itself, when the
# stand-in script has to install Docker and build the base images, up to 10 more.
pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(1800)]

SERVICES = sorted(["rabbitmq", *APP_SERVICES])
BURST = 2000
HEALTHY_WITHIN_S = 180
PNG = b"\x89PNG"


def assert_exact(stack: ComposeStack, step: str) -> None:
    verdict = stack.settled()
    print(
        f"COMPOSE {step}: published {verdict.published} rows {verdict.rows} lost {verdict.lost} "
        f"duplicated {verdict.duplicated} unexpected {verdict.unexpected}",
        flush=True,
    )
    assert verdict.exact and verdict.rows == len(stack.published), f"{step}: {verdict}"
    if dead := stack.dead_letters():
        print(f"COMPOSE {step}: dead-lettered so far: {dead}", flush=True)


def test_up_builds_the_images_and_every_container_becomes_healthy(stack: ComposeStack) -> None:
    started = time.monotonic()
    stack.compose("build", timeout=1200)
    timed("build (deploy/Dockerfile, four targets)", time.monotonic() - started)
    started = time.monotonic()
    stack.compose("up", "-d", "--build", timeout=600)
    healthy_s = stack.wait_ready(HEALTHY_WITHIN_S)
    timed("up -d --build (cached) to all healthy", time.monotonic() - started)
    timed("  of which waiting for health", healthy_s)

    containers = stack.containers()
    assert [c.service for c in containers] == SERVICES
    print(f"COMPOSE image sizes: {stack.image_sizes()}", flush=True)
    for container in containers:
        assert container.health == "healthy", container
        assert container.ports, f"{container.service} publishes nothing"
        assert {host for host, _ in container.ports.values()} == {"127.0.0.1"}, container.ports
        if container.service in APP_SERVICES:
            assert container.user == f"{stack.app_uid}:{stack.app_uid}", container
    # The model trained into the image at build time is the one served.
    info = stack.get("model_api", "/model/info")
    assert info.status_code == 200 and info.json()["model_version"], info.text


def test_a_burst_lands_in_the_bind_mounted_csv(stack: ComposeStack) -> None:
    stack.burst(BURST)
    assert_exact(stack, "burst")

    [csv] = stack.csvs()
    assert csv == stack.logs / "metric_log.csv"
    assert csv.stat().st_uid == stack.app_uid, "written on the host by the services' uid (APP_UID)"
    lines = csv.read_text(encoding="utf-8").splitlines()
    assert lines[0] == METRIC_LOG_HEADER and lines.count(METRIC_LOG_HEADER) == 1
    assert not any(" " in line for line in lines)
    rows = pd.read_csv(csv, dtype={"id": str})
    assert list(rows.columns) == ["id", "y_true", "y_pred", "absolute_error"]
    assert (rows["absolute_error"] - (rows["y_true"] - rows["y_pred"]).abs()).abs().max() < 1e-9

    summary = stack.get("metric_api", "/metrics/summary").json()
    assert summary["count"] == len(rows)
    assert math.isclose(summary["mae"], rows["absolute_error"].mean(), rel_tol=1e-9)

    # plot_api reads the same folder and draws the histogram into it (every PLOT_INTERVAL_S).
    served = wait_until(functools.partial(served_png, stack), 60, "plot_api to serve the histogram", 1)
    assert served.startswith(PNG)
    assert (stack.logs / "error_distribution.png").read_bytes().startswith(PNG)


def served_png(stack: ComposeStack) -> bytes | None:
    answer = stack.get("plot_api", "/plot/latest.png")
    return answer.content if answer.status_code == 200 else None


@pytest.mark.faults
def test_kill_9_of_each_service_is_restarted_and_loses_nothing(stack: ComposeStack) -> None:
    if os.geteuid() != 0:
        pytest.skip("kill -9 of a container's process from the host needs root")
    for service in SERVICES:
        stack.burst(BURST)
        rows = stack.verdict().rows
        killed = stack.kill(service)
        started = time.monotonic()
        wait_until(functools.partial(restarted, stack, killed), 60, f"{service} to be restarted", 0.2)
        stack.wait_answering(HEALTHY_WITHIN_S)
        timed(
            f"kill -9 {service} ({rows} of {len(stack.published)} rows then): restarted and answering", time.monotonic() - started
        )
        assert_exact(stack, f"kill -9 {service}")


def restarted(stack: ComposeStack, killed: Container) -> bool:
    return stack.container(killed.service, killed.number).restarts > killed.restarts


def test_down_then_up_keeps_the_csv_the_queues_and_the_metric_state(stack: ComposeStack) -> None:
    # Labels and predictions of one burst wait on the broker while metric_api is stopped ...
    stack.compose("stop", "metric_api")
    waiting = stack.burst(BURST)
    wait_until(
        lambda: all(stack.queues()[name][0] == len(waiting) for name in ("y_true", "y_pred")),
        60,
        "the burst's labels and predictions to wait in their queues",
        1,
    )
    rows_before = stack.verdict().rows
    assert rows_before == len(stack.published) - len(waiting)

    # ... then everything goes down (containers and network, not the volume) and comes up.
    stack.down()
    assert stack.containers() == []
    started = time.monotonic()
    stack.compose("up", "-d", timeout=600)
    stack.wait_ready(HEALTHY_WITHIN_S)
    timed("up -d after down to all healthy", time.monotonic() - started)

    assert_exact(stack, "down and up")
    [csv] = stack.csvs()
    lines = csv.read_text(encoding="utf-8").splitlines()
    assert lines.count(METRIC_LOG_HEADER) == 1 and len(lines) == len(stack.published) + 1
    # metric_api's statistics continue from its state in logs/, they do not start again.
    summary = stack.get("metric_api", "/metrics/summary").json()
    assert summary["count"] == len(stack.published)


def predictions_made(stack: ComposeStack, number: int) -> float:
    """One model_api replica's predictions for features messages (its own /metrics)."""
    text = stack.get("model_api", "/metrics", number).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "predictions_total" and sample.labels.get("path") == "queue":
                return sample.value
    return 0.0


def test_the_scale_override_runs_three_model_replicas_that_share_the_work(stack: ComposeStack) -> None:
    stack.use(COMPOSE_FILE, SCALE_FILE)
    stack.compose("up", "-d", timeout=600)
    stack.wait_ready(HEALTHY_WITHIN_S)
    replicas = stack.containers("model_api")
    assert [c.number for c in replicas] == [1, 2, 3]
    assert len({c.ports[8002] for c in replicas}) == 3, "each replica on its own host port"
    wait_until(lambda: stack.queues()["features"][1] == 3, 30, "three consumers on features", 1)

    before = {c.number: predictions_made(stack, c.number) for c in replicas}
    stack.burst(BURST)
    assert_exact(stack, "three model_api replicas")
    split = {number: predictions_made(stack, number) - before[number] for number in before}
    print(f"COMPOSE predictions by replica: {split}", flush=True)
    assert sum(split.values()) >= BURST, split
    for number, count in split.items():
        assert count >= BURST / 10, f"replica {number} made {count:.0f} of {BURST} predictions: {split}"


def test_a_missing_logs_folder_is_an_error_naming_it(stack: ComposeStack) -> None:
    """compose.yml's bind mount does not create a missing logs/ (Docker would make it owned by
    root, unwritable for the services): starting metric_api without it fails, naming the path."""
    stack.compose("stop", "metric_api")
    away = stack.logs.rename(stack.logs.with_name("logs.away"))
    try:
        refused = stack.compose("up", "-d", "--no-deps", "--force-recreate", "metric_api", check=False)
        assert not stack.logs.exists(), "Docker made the folder"
    finally:
        away.rename(stack.logs)
    assert refused.returncode != 0 and "does not exist" in refused.stderr and str(stack.logs) in refused.stderr, refused.stderr
    stack.compose("up", "-d", "--no-deps", "metric_api")
    stack.wait_answering(HEALTHY_WITHIN_S)


def test_a_logs_folder_the_services_uid_cannot_write_gives_a_readable_503(stack: ComposeStack) -> None:
    """As a user whose logs/ belongs to another uid than APP_UID: metric_api starts, answers
    /health with a 503 naming the folder, and writes nothing; with the right uid it goes on."""
    other = str(stack.app_uid + 1)
    stack.compose("up", "-d", "--no-deps", "metric_api", env={"APP_UID": other, "APP_GID": other})
    assert stack.container("metric_api").user == f"{other}:{other}"

    def refused() -> httpx.Response | None:
        try:
            answer = stack.get("metric_api", "/health")
        except (httpx.HTTPError, ValueError):
            return None  # not listening yet, or not published yet
        return answer if answer.status_code == 503 else None

    answer = wait_until(refused, 60, "metric_api's /health to refuse", 1)
    reason = answer.json()["reason"]
    print(f"COMPOSE logs/ of another uid: 503 {reason}", flush=True)
    assert "/app/logs" in reason, reason

    stack.compose("up", "-d", "--no-deps", "metric_api")
    stack.wait_answering(HEALTHY_WITHIN_S)
    stack.burst(100)
    assert_exact(stack, "after the uid is put right")


def test_nothing_was_dead_lettered(stack: ComposeStack) -> None:
    """Nothing any step did was a poison message: every dead-letter queue is empty. (A prediction made
    again after a redelivery may differ in its last bits; the join takes it as the duplicate it is.)"""
    assert stack.dead_letters() == []


def test_the_cluster_override_runs_three_nodes_and_two_shards_exactly_once(stack: ComposeStack) -> None:
    """deploy/compose.cluster.yml: three clustered nodes, quorum queues, the join in two shards
    (logs/shard0, logs/shard1), plot_api's one view over both. On fresh volumes and logs: the
    default layout's classic queues cannot become quorum queues."""
    started = time.monotonic()
    stack.down("-v")
    for csv in stack.csvs():
        csv.unlink()
    stack.published.clear()
    stack.use(COMPOSE_FILE, CLUSTER_FILE)
    stack.compose("up", "-d", "--build", timeout=1200)
    stack.wait_ready(2 * HEALTHY_WITHIN_S)
    timed("cluster layout: down -v, up to all healthy", time.monotonic() - started)
    members = stack.management("GET", "/nodes")
    assert sorted(node["name"] for node in members if node["running"]) == [
        "rabbit@rabbitmq",
        "rabbit@rabbitmq2",
        "rabbit@rabbitmq3",
    ], members
    for shard, service in enumerate(["metric_api", "metric_api_1"]):
        health = stack.get(service, "/health").json()
        assert (health["shard"], health["shards"]) == (shard, 2), health

    stack.burst(BURST)
    assert_exact(stack, "cluster layout, two shards")
    rows = {csv.parent.name: len(pd.read_csv(csv, dtype={"id": str})) for csv in stack.csvs()}
    print(f"COMPOSE rows per shard: {rows}", flush=True)
    assert sorted(rows) == ["shard0", "shard1"] and all(n >= BURST / 4 for n in rows.values()), rows
    queue = stack.management("GET", "/queues/%2F/y_true.shard0of2")
    assert queue["arguments"]["x-queue-type"] == "quorum" and queue["arguments"]["x-single-active-consumer"] is True

    def merged() -> int | None:
        answer = stack.get("plot_api", "/api/summary")
        return answer.json()["count"] if answer.status_code == 200 else None

    wait_until(lambda: merged() == BURST, 60, "plot_api's merged count to be every row", 1)
    timed("cluster layout, all of it", time.monotonic() - started)
