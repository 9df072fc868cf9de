"""Faults injected for real — broker restart, cut connections, kill -9, outages, poison,
a full disk — and the promise checked after each: one CSV row per published id.

Each test prints a FAULT line with its figures (run with -s to see them).
"""

import asyncio
import functools
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic_core import Url

from harness.checker import Verdict, check
from harness.pipeline import Pipeline, running_pipeline
from harness.processes import wait_until
from harness.proxy import TcpProxy
from services.features_api.publisher import MAX_BURST

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.faults]
BURST = 3000
QUEUES = ("features", "y_true", "y_pred")


def report(fault: str, verdict: Verdict, recovery_s: float | None = None) -> None:
    recovery = f" recovery {recovery_s:.1f}s" if recovery_s is not None else ""
    print(
        f"\nFAULT {fault}: sent {verdict.published} rows {verdict.rows} lost {verdict.lost} "
        f"duplicated {verdict.duplicated} unexpected {verdict.unexpected}{recovery}"
    )


def all_healthy(pipeline: Pipeline) -> bool:
    return all((answer := s.health()) is not None and answer.status_code == 200 for s in pipeline.services.values())


def has_rows(pipeline: Pipeline, count: int) -> bool:
    return len(pipeline.rows()) >= count


def reconnected(pipeline: Pipeline, times: int) -> bool:
    """Whether each service with a broker connection has remade it ``times`` times."""
    for name in ("features_api", "model_api", "metric_api"):
        metrics = httpx.get(f"{pipeline.url(name)}/metrics").text
        count = next(
            (s.value for f in text_string_to_metric_families(metrics) for s in f.samples if s.name == "broker_reconnects_total"),
            0,
        )
        if count < times:
            return False
    return True


def settled(pipeline: Pipeline, ids: list[str], timeout: float = 120) -> Verdict:
    """Wait until every published id has a row and the queues are empty; return the verdict."""
    wanted = set(ids)
    wait_until(lambda: wanted <= set(pipeline.rows()["id"]), timeout, f"rows for all {len(ids)} ids")
    wait_until(lambda: drained(pipeline), 30, "every queue to drain")
    return check(ids, pipeline.csv)


def drained(pipeline: Pipeline) -> bool:
    queues = pipeline.queues()
    return all(queues[name][0] == 0 for name in QUEUES)


def assert_said_once(pipeline: Pipeline) -> None:
    """A broker outage is one warning per service, not an ERROR (or a traceback) per channel."""
    for service in pipeline.services.values():
        lines = service.output().splitlines()
        errors = [line for line in lines if " ERROR " in line]
        assert not errors, f"{service.name} logged the outage as errors:\n" + "\n".join(errors[:10])
        lost = [line for line in lines if "lost connection to" in line]
        assert len(lost) <= 1, f"{service.name} said the outage {len(lost)} times:\n" + "\n".join(lost[:10])


def assert_recovered(pipeline: Pipeline) -> None:
    queues = pipeline.queues()
    for name in QUEUES:
        assert queues[name] == (0, 1), f"{name} should be empty with its one consumer back: {queues}"
    assert all_healthy(pipeline)


@pytest.fixture
def pipeline(tmp_path: Path, model_path: Path, amqp_url: str) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path, model_path, amqp_url) as pipeline:
        yield pipeline


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def burst_in_background(pool: ThreadPoolExecutor, pipeline: Pipeline, count: int = BURST) -> Future[list[str]]:
    return pool.submit(pipeline.burst, count, 180)


def publish_until_cut(pipeline: Pipeline, limit_s: float = 120) -> httpx.HTTPError | None:
    """Publish bursts back to back until a request fails (the service was killed under it, or is
    not listening yet); the error, or None if ``limit_s`` passed without one.

    A fixed-size burst can finish before the kill lands (the publisher outruns the join), so the
    test would cut nothing; publishing until cut always has a request in flight or refused."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            answer = httpx.post(
                f"{pipeline.url('features_api')}/features/publish", json={"count": MAX_BURST}, headers=pipeline.auth, timeout=60
            )
        except httpx.HTTPError as cut:
            return cut
        assert answer.status_code == 200, answer.text
    return None


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture
def broker_control(amqp_url: str) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed here: the broker cannot be restarted by the test")
    if Url(amqp_url).host not in ("localhost", "127.0.0.1"):
        pytest.skip(f"the broker at {amqp_url} is not this machine's: the test cannot restart it")
    result = subprocess.run(["rabbitmqctl", "status"], capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        pytest.skip(f"no rights to control the broker with rabbitmqctl: {result.stderr.decode()[:200]}")


@pytest.mark.usefixtures("broker_control")
def test_broker_restart_mid_stream(pipeline: Pipeline, background: ThreadPoolExecutor) -> None:
    burst = burst_in_background(background, pipeline)
    wait_until(lambda: len(pipeline.rows()) >= 300, 60, "the stream to be flowing")
    rabbitmqctl("stop_app")
    time.sleep(2)
    try:
        wait_until(lambda: not all_healthy(pipeline), 10, "the services to notice the broker is gone")
    finally:
        rabbitmqctl("start_app")
    restarted = time.monotonic()
    wait_until(lambda: all_healthy(pipeline), 60, "every service healthy again")
    recovery = time.monotonic() - restarted
    ids = burst.result()
    verdict = settled(pipeline, ids)
    report("broker restart (stop_app/start_app)", verdict, recovery)
    assert verdict.exact, verdict
    assert_recovered(pipeline)
    assert_said_once(pipeline)


@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_connections_cut_or_stalled_mid_stream(
    tmp_path: Path, model_path: Path, amqp_url: str, background: ThreadPoolExecutor, fault: str
) -> None:
    proxy = TcpProxy(Url(amqp_url).port or 5672).start()
    try:
        proxied = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        # A stalled connection is only noticed by missed heartbeats: 2 s ones here.
        with running_pipeline(tmp_path, model_path, amqp_url, AMQP_URL=proxied, AMQP_HEARTBEAT_S="2") as pipeline:
            burst = burst_in_background(background, pipeline)
            recoveries = []
            for times, at_rows in enumerate((300, 1500), start=1):
                wait_until(functools.partial(has_rows, pipeline, at_rows), 60, f"{at_rows} rows")
                proxy.cut() if fault == "cut" else proxy.stall()
                faulted_at = time.monotonic()
                wait_until(
                    functools.partial(reconnected, pipeline, times), 60, f"every broker client to reconnect after the {fault}"
                )
                wait_until(lambda: all_healthy(pipeline), 60, f"every service healthy after the {fault}")
                recoveries.append(time.monotonic() - faulted_at)
            verdict = settled(pipeline, burst.result())
            report(f"all connections {fault} twice (TCP proxy)", verdict, max(recoveries))
            assert verdict.exact, verdict
            assert_recovered(pipeline)
    finally:
        proxy.close()


@pytest.mark.parametrize("service", ["metric_api", "model_api", "plot_api"])
def test_kill_9_mid_stream(pipeline: Pipeline, background: ThreadPoolExecutor, service: str) -> None:
    burst = burst_in_background(background, pipeline)
    wait_until(lambda: len(pipeline.rows()) >= 500, 60, "the stream to be flowing")
    killed_at = time.monotonic()
    pipeline.restart(service, signal.SIGKILL)
    recovery = time.monotonic() - killed_at
    verdict = settled(pipeline, burst.result())
    report(f"kill -9 of {service}, restarted", verdict, recovery)
    assert verdict.exact, verdict
    assert_recovered(pipeline)
    if service == "plot_api":
        png = wait_until(
            lambda: (r := httpx.get(f"{pipeline.url('plot_api')}/plot/latest.png")).status_code == 200 and r, 10, "a PNG"
        )
        assert png.content.startswith(b"\x89PNG")


def test_model_outage_does_not_stall_labels(pipeline: Pipeline) -> None:
    model = pipeline.services["model_api"]
    model.stop()
    ids = pipeline.burst(1000)
    # The labels are taken in and stored while their predictions cannot come: y_true
    # drains although nothing can be joined yet.
    wait_until(lambda: pipeline.queues()["y_true"][0] == 0, 30, "y_true to drain during the model outage")
    summary = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()
    assert summary["join"]["pending_y_true"] == 1000 and pipeline.queues()["features"][0] == 1000
    started = time.monotonic()
    pipeline.restart("model_api")
    verdict = settled(pipeline, ids)
    report("model_api down while 1000 samples were sent", verdict, time.monotonic() - started)
    assert verdict.exact, verdict
    assert httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()["join"]["pending_y_true"] == 0


async def publish_raw(amqp_url: str, queue: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for body in bodies:
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
            )


async def drain_dlq(amqp_url: str, queue: str) -> list[tuple[bytes, dict[str, Any]]]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.declare_queue(f"{queue}.dlq", passive=True)
        found = []
        while (message := await dlq.get(fail=False)) is not None:
            found.append((message.body, dict(message.headers)))
            await message.ack()
        return found


def test_orphans_are_written_after_their_ttl(tmp_path: Path, model_path: Path, amqp_url: str) -> None:
    with running_pipeline(tmp_path, model_path, amqp_url, ORPHAN_TTL_S="1") as pipeline:
        lone = {"id": "1669147134.196809", "body": 151.0, "ts": 1669147134.196809}
        asyncio.run(publish_raw(amqp_url, f"{pipeline.prefix}y_true", [json.dumps(lone).encode()]))
        orphans = pipeline.logs_dir / "orphans.csv"
        wait_until(orphans.exists, 10, "orphans.csv")
        lines = orphans.read_text().splitlines()
        assert lines[0] == "id,kind,value,arrived_at" and lines[1].startswith("1669147134.196809,y_true,151.0,")
        summary = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()
        assert summary["join"]["orphans"] == 1 and summary["join"]["pending_y_true"] == 0
        assert not pipeline.rows()["id"].tolist()


def poison(kind: str) -> list[tuple[str, bytes]]:
    """(what, body) of bad messages for one queue."""
    body = [0.01] * 10 if kind == "features" else 151.0
    wrong_type = "151.0" if kind != "features" else [0.01] * 9
    good = {"id": "1.000001", "body": body, "ts": 1.0}
    absurd = [1e300] * 10 if kind == "features" else 1.7e308
    return [
        ("not JSON", b"\x00not json{"),
        ("JSON but not an object", b"[1, 2, 3]"),
        ("missing id", json.dumps({"body": body}).encode()),
        ("missing body", json.dumps({"id": "1.000002"}).encode()),
        ("body of the wrong type or length", json.dumps({"id": "1.000003", "body": wrong_type}).encode()),
        (
            "NaN",
            json.dumps({**good, "id": "1.000004", "body": [float("nan")] * 10 if kind == "features" else float("nan")}).encode(),
        ),
        (
            "Infinity",
            json.dumps({**good, "id": "1.000005", "body": [float("inf")] * 10 if kind == "features" else float("inf")}).encode(),
        ),
        ("huge (1 MB)", json.dumps({**good, "id": "1.000006", "pad": "x" * 1_000_000}).encode()),
        ("empty", b""),
        ("id with a comma", json.dumps({**good, "id": "1,2"}).encode()),
        # Finite but absurd: beyond FEATURE_ABS_MAX / TARGET_ABS_MAX, or no epoch time.
        ("absurd value", json.dumps({**good, "id": "1.000007", "body": absurd}).encode()),
        ("absurd ts", json.dumps({**good, "id": "1.000008", "ts": -1e300}).encode()),
    ]


def test_poison_messages_go_to_the_dlq_and_good_ones_flow(pipeline: Pipeline, amqp_url: str) -> None:
    before = pipeline.burst(20)
    for kind in ("features", "y_true", "y_pred"):
        queue = f"{pipeline.prefix}{kind}"
        asyncio.run(publish_raw(amqp_url, queue, [body for _, body in poison(kind)]))
    # An accepted oddity: unknown extra fields; and a conflict: the same id, another label.
    extra = {"id": "2.000001", "body": 100.0, "ts": 2.0, "added_by_a_newer_producer": True}
    asyncio.run(publish_raw(amqp_url, f"{pipeline.prefix}y_true", [json.dumps(extra).encode()]))
    asyncio.run(publish_raw(amqp_url, f"{pipeline.prefix}y_pred", [json.dumps({**extra, "body": 90.0}).encode()]))
    conflicting = {"id": before[0], "body": -1.0, "ts": 2.0}
    asyncio.run(publish_raw(amqp_url, f"{pipeline.prefix}y_true", [json.dumps(conflicting).encode()]))
    after = pipeline.burst(20)

    verdict = settled(pipeline, before + after + ["2.000001"])
    assert verdict.exact, verdict
    assert_recovered(pipeline)
    metrics = httpx.get(f"{pipeline.url('metric_api')}/metrics").text + httpx.get(f"{pipeline.url('model_api')}/metrics").text
    dead = {
        s.labels["queue"].removeprefix(pipeline.prefix): s.value
        for f in text_string_to_metric_families(metrics)
        if f.name == "messages_dead_lettered"
        for s in f.samples
        if s.name == "messages_dead_lettered_total"
    }
    for kind in ("features", "y_true", "y_pred"):
        expected = len(poison(kind)) + (1 if kind == "y_true" else 0)
        found = asyncio.run(drain_dlq(amqp_url, f"{pipeline.prefix}{kind}"))
        assert len(found) == expected == dead[kind], (kind, [h for _, h in found], dead)
        assert all(headers.get("x-dlq-reason") for _, headers in found), found
    summary = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()
    assert summary["join"]["dead_lettered"] == len(poison("y_true")) + 1 + len(poison("y_pred"))
    assert httpx.get(f"{pipeline.url('model_api')}/model/info").json()["dead_lettered"] == len(poison("features"))
    bad = sum(len(poison(k)) for k in ("features", "y_true", "y_pred")) + 1
    print(f"\nFAULT poison: {bad} bad messages dead-lettered, {verdict}")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, check=False
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root): the full-disk test cannot run")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_pauses_the_metric_service_and_loses_nothing(
    tiny_disk: Path, model_path: Path, amqp_url: str, tmp_path: Path
) -> None:
    with running_pipeline(tmp_path, model_path, amqp_url, LOGS_DIR=str(tiny_disk)) as pipeline:
        pipeline.logs_dir = tiny_disk
        first = pipeline.burst(50)
        wait_until(lambda: set(first) <= set(pipeline.rows()["id"]), 30, "the first rows")
        filler = tiny_disk / "filler"
        # Fill the disk to the last byte (dd stops at "No space left on device").
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True, check=False)
        second = pipeline.burst(300)
        metric = pipeline.services["metric_api"]
        reason = wait_until(lambda: (a := metric.health()) is not None and a.status_code == 503 and a.json()["reason"], 30, "503")
        assert str(tiny_disk) in reason and ("No space left on device" in reason or "disk is full" in reason), reason
        time.sleep(1)
        waiting = pipeline.queues()
        assert waiting["y_true"][0] + waiting["y_pred"][0] > 0, waiting  # kept in the broker, not lost
        freed = time.monotonic()
        filler.unlink()
        metric.wait_healthy(timeout=30)
        verdict = settled(pipeline, first + second)
        report("LOGS_DIR full, then freed", verdict, time.monotonic() - freed)
        assert verdict.exact, verdict


def test_kill_9_of_features_mid_burst(tmp_path: Path, model_path: Path, amqp_url: str, background: ThreadPoolExecutor) -> None:
    """A burst cut by kill -9 cannot tell which ids it sent; what must hold: no id twice, and
    every sample cut between its two publishes surfaces as an orphan, not silently."""
    with running_pipeline(tmp_path, model_path, amqp_url, ORPHAN_TTL_S="3") as pipeline:
        doomed = background.submit(publish_until_cut, pipeline)
        wait_until(lambda: len(pipeline.rows()) >= 500, 60, "the stream to be flowing")
        pipeline.restart("features_api", signal.SIGKILL)
        assert isinstance(doomed.result(), httpx.HTTPError), "the publisher's kill did not cut a request"
        after = pipeline.burst(200)
        wait_until(lambda: drained(pipeline), 60, "every queue to drain")

        def nothing_pending() -> bool:
            join = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()["join"]
            return join["pending_y_true"] + join["pending_y_pred"] == 0

        wait_until(nothing_pending, 30, "no half left waiting")
        rows = pipeline.rows()
        orphans_csv = pipeline.logs_dir / "orphans.csv"
        orphan_ids = set(pd.read_csv(orphans_csv, dtype={"id": str})["id"]) if orphans_csv.exists() else set()
        verdict = check(after, pipeline.csv)
        assert rows["id"].is_unique and verdict.lost == verdict.duplicated == 0, verdict
        assert not orphan_ids & set(rows["id"])
        print(
            f"\nFAULT kill -9 of features_api mid-burst: {len(rows)} rows, {len(orphan_ids)} half-sent samples as orphans, "
            f"after-restart burst {verdict}"
        )
