"""The state bounded by policy, on the real broker: a prediction that waited past HALF_RETENTION_S
leaves for expired_halves.log and is counted; its label coming after that is dead-lettered with the
reason (docs/guarantees.md, "How long the state remembers"), and no row is ever written for it.
metric_api and plot_api restart from their snapshots with what the whole CSV says."""

import asyncio
import json
import signal
import time
from pathlib import Path

import aio_pika
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.pipeline import ROW_CHART_ROUTES, running_pipeline
from harness.processes import ServiceProcess, free_port, service_env, stop_all, wait_until
from harness.queues import delete_queues, unique_prefix
from services.common.amqp.topology import dlq_name
from services.common.messages import format_sample_id
from tests.integration.test_metric_summary import assert_agrees_with_the_csv, training_mean

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def publish(amqp_url: str, queue: str, bodies: list[dict[str, object]]) -> None:
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for body in bodies:
            message = aio_pika.Message(json.dumps(body).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=queue)


async def dead_letters(amqp_url: str, queue: str) -> list[tuple[str, str]]:
    """(id, x-dlq-reason) of every message in ``queue``'s DLQ, taken off it."""
    found = []
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.get_queue(dlq_name(queue))
        while (message := await dlq.get(fail=False, no_ack=True)) is not None:
            found.append((json.loads(message.body)["id"], str(message.headers.get("x-dlq-reason"))))
    return found


def test_a_label_after_its_prediction_expired_is_dead_lettered_with_the_reason(
    tmp_path: Path, model_path: Path, amqp_url: str
) -> None:
    prefix = unique_prefix()
    logs = tmp_path / "logs"
    first = int(time.time() * 1_000_000)
    ids = [format_sample_id(first + i) for i in range(5)]
    env = service_env(
        AMQP_URL=amqp_url,
        QUEUE_PREFIX=prefix,
        LOGS_DIR=str(logs),
        MODEL_PATH=str(model_path),
        METRIC_PORT=str(free_port()),
        ORPHAN_TTL_S="0.5",
        HALF_RETENTION_S="1",
        WRITTEN_HORIZON_S="3600",
    )
    metric = ServiceProcess("metric_api", env, tmp_path).start()
    try:
        metric.wait_healthy()
        now = time.time()
        predictions = [{"id": i, "body": 150.0, "ts": now, "model_version": "v1"} for i in ids]
        asyncio.run(publish(amqp_url, f"{prefix}y_pred", predictions))

        def expired() -> int:
            return int(httpx.get(f"{metric.url}/metrics/summary").json()["join"]["expired"])

        wait_until(lambda: expired() == 5, 30, "the 5 predictions to expire")
        archived = (logs / "expired_halves.log").read_text().splitlines()
        assert sorted(line.split(",")[:2] for line in archived[1:]) == [[i, "y_pred"] for i in ids]

        asyncio.run(publish(amqp_url, f"{prefix}y_true", [{"id": i, "body": 140.0, "ts": now} for i in ids]))
        summary = wait_until(
            lambda: (s := httpx.get(f"{metric.url}/metrics/summary").json())["join"]["dead_lettered"] == 5 and s,
            30,
            "5 dead letters",
        )
        assert summary["count"] == 0 and summary["join"]["pending_y_true"] == 0
        letters = asyncio.run(dead_letters(amqp_url, f"{prefix}y_true"))
        assert sorted(sample_id for sample_id, _ in letters) == ids
        assert all("expired" in reason and "HALF_RETENTION_S" in reason for _, reason in letters)
        assert (logs / "metric_log.csv").read_text().splitlines()[1:] == []  # no row, ever
        families = {f.name: f.samples for f in text_string_to_metric_families(httpx.get(f"{metric.url}/metrics").text)}
        assert {s.labels["kind"]: s.value for s in families["metric_expired_halves"]} == {"y_true": 0.0, "y_pred": 5.0}

        stop_all([metric])  # the count is kept in the state
        metric = ServiceProcess("metric_api", env, tmp_path).start()
        metric.wait_healthy()
        assert expired() == 5
    finally:
        stop_all([metric])
        delete_queues(amqp_url, prefix)


def test_metric_api_and_plot_api_restart_from_their_snapshots_with_the_statistics_of_the_whole_csv(
    tmp_path: Path, model_path: Path, amqp_url: str
) -> None:
    with running_pipeline(tmp_path, model_path, amqp_url) as pipeline:
        pipeline.burst(300)
        pipeline.wait_all_joined()
        version = httpx.get(f"{pipeline.url('model_api')}/model/info").json()["model_version"]
        charts = {route: answer.headers["etag"] for route, answer in pipeline.settled_charts(routes=ROW_CHART_ROUTES).items()}
        pipeline.restart("metric_api", signal.SIGTERM)  # each writes its snapshot as it stops
        pipeline.restart("plot_api", signal.SIGTERM)
        pipeline.burst(100)  # the tail past the snapshot
        rows = pipeline.wait_all_joined()
        pipeline.restart("metric_api", signal.SIGTERM)

        assert (pipeline.logs_dir / "metric_state.snapshot").exists() and (pipeline.logs_dir / "plot_state.snapshot").exists()
        assert "started from" in pipeline.services["metric_api"].output()
        summary = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()
        assert_agrees_with_the_csv(summary, rows, training_mean(model_path), dict.fromkeys(rows["id"], version))
        assert "started from" in pipeline.services["plot_api"].output()
        after = {route: answer.headers["etag"] for route, answer in pipeline.settled_charts(routes=ROW_CHART_ROUTES).items()}
        assert after != charts  # redrawn with the 100 rows more...
        pipeline.restart("plot_api", signal.SIGTERM)
        assert {
            route: answer.headers["etag"] for route, answer in pipeline.settled_charts(routes=ROW_CHART_ROUTES).items()
        } == after  # ...and the same after a restart
