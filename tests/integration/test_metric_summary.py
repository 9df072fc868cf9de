"""/metrics/summary, the MAE alert and metric_api's Prometheus metrics, against the real
broker and real processes, checked against pandas/scikit-learn on the CSV (tests/quality.py)."""

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.pipeline import Pipeline, running_pipeline
from harness.processes import ServiceProcess, free_port, service_env, stop_all, wait_until
from harness.queues import delete_queues, unique_prefix
from services.common.messages import format_sample_id
from tests.json_stub import JsonStub
from tests.quality import differences, expected_window, strict_json

pytestmark = [pytest.mark.broker, pytest.mark.slow]
WINDOWS = ("all", "last_100", "last_1000", "last_5m")


def training_mean(model_path: Path) -> float:
    return json.loads(model_path.with_name(model_path.name + ".json").read_text())["target_mean"]


def read_summary(url: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/metrics/summary")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    return strict_json(answer.text)  # refuses NaN and Infinity


def scrape(url: str) -> dict[str, list]:
    """Samples of each metric family of ``/metrics``, parsed by prometheus-client's parser."""
    return {f.name: f.samples for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}


def assert_agrees_with_the_csv(summary: dict[str, Any], rows: pd.DataFrame, baseline: float, versions: dict[str, str]) -> None:
    """Every window and model version of ``summary`` equals pandas on ``rows`` (all joined
    within the last 5 minutes) to 1e-9; ``versions`` maps each id to its model version."""
    expected = {
        "all": rows,
        "last_100": rows.tail(100),
        "last_1000": rows.tail(1000),
        "last_5m": rows,
    }
    for name in WINDOWS:
        problems = differences(summary["windows"][name], expected_window(expected[name], baseline))
        assert not problems, (name, problems)
    by_version = rows.groupby(rows["id"].map(versions))
    assert set(summary["by_model_version"]) == set(by_version.groups)
    for version, rows_of_version in by_version:
        problems = differences(summary["by_model_version"][version], expected_window(rows_of_version, baseline))
        assert not problems, (version, problems)
    assert summary["count"] == len(rows) == summary["windows"]["all"]["count"]
    assert summary["mae"] == summary["windows"]["all"]["mae"]
    assert summary["rmse"] == summary["windows"]["all"]["rmse"]
    assert summary["last_id"] == rows["id"].iloc[-1]


# --- the whole pipeline ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, model_path: Path, amqp_url: str) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path_factory.mktemp("summary"), model_path, amqp_url) as pipeline:
        yield pipeline


def test_after_a_burst_every_window_agrees_with_pandas_on_the_csv(pipeline: Pipeline) -> None:
    started = time.time()
    pipeline.burst(400)
    rows = pipeline.wait_all_joined()
    metric = pipeline.url("metric_api")
    summary = wait_until(lambda: (s := read_summary(metric))["count"] == len(rows) and s, 10, "the summary to count every row")
    version = httpx.get(f"{pipeline.url('model_api')}/model/info").json()["model_version"]

    assert_agrees_with_the_csv(summary, rows, training_mean(pipeline.model_path), dict.fromkeys(rows["id"], version))
    assert summary["baseline"]["mean"] == training_mean(pipeline.model_path)
    join = summary["join"]
    assert (join["pending_y_true"], join["pending_y_pred"], join["orphans"], join["dead_lettered"]) == (0, 0, 0, 0)
    assert 0 <= join["lag_p50_s"] <= join["lag_p99_s"] < 60
    assert 0 < summary["latency"]["p50_s"] <= summary["latency"]["p99_s"] < 60
    assert started <= summary["last_row_at"] <= time.time()
    assert summary["rows_per_s"] > 0
    assert summary["alert"] is None  # MAE_ALERT is not set

    metrics = scrape(metric)
    mae = {s.labels["window"]: s.value for s in metrics["model_mae"]}
    rmse = {s.labels["window"]: s.value for s in metrics["model_rmse"]}
    assert set(mae) == set(rmse) == set(WINDOWS)
    assert mae["all"] == pytest.approx(rows["absolute_error"].mean(), rel=1e-9)
    latency_count = next(s.value for s in metrics["end_to_end_latency_seconds"] if s.name.endswith("_count"))
    assert latency_count == len(rows)
    pending = {s.labels["kind"]: s.value for s in metrics["metric_pending_halves"]}
    assert pending == {"y_true": 0, "y_pred": 0}
    consumed = {s.labels["queue"].rsplit(".", 1)[-1] for s in metrics["messages_consumed"] if s.name.endswith("_total")}
    assert consumed == {"y_true", "y_pred"}


def test_a_restarted_metric_api_rebuilds_the_same_summary_from_the_csv(pipeline: Pipeline) -> None:
    pipeline.burst(150)
    rows = pipeline.wait_all_joined()
    version = httpx.get(f"{pipeline.url('model_api')}/model/info").json()["model_version"]
    pipeline.restart("metric_api", signal.SIGTERM)

    summary = read_summary(pipeline.url("metric_api"))
    assert_agrees_with_the_csv(summary, rows, training_mean(pipeline.model_path), dict.fromkeys(rows["id"], version))
    assert summary["last_row_at"] is not None and summary["rows_per_s"] > 0  # join times came back too


# --- metric_api alone, fed by the test: alert, webhook, model versions -------------------


def publish_rows(amqp_url: str, prefix: str, rows: list[tuple[str, float, float, str]]) -> None:
    """Publish each (id, y_true, y_pred, model_version) as its label and its prediction."""

    async def publish() -> None:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            for sample_id, y_true, y_pred, version in rows:
                ts = time.time()
                for queue, body in (
                    ("y_true", {"id": sample_id, "body": y_true, "ts": ts}),
                    ("y_pred", {"id": sample_id, "body": y_pred, "ts": ts, "model_version": version}),
                ):
                    await channel.default_exchange.publish(
                        aio_pika.Message(json.dumps(body).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=f"{prefix}{queue}",
                    )

    asyncio.run(publish())


def test_the_alert_is_raised_and_cleared_once_each_and_versions_are_kept_apart(
    tmp_path: Path, model_path: Path, amqp_url: str
) -> None:
    prefix = unique_prefix()
    logs = tmp_path / "logs"
    first_id = int(time.time() * 1_000_000)
    worse = [(format_sample_id(first_id + i), 100.0 + i, 110.0 + i, "v1") for i in range(150)]  # error 10
    better = [(format_sample_id(first_id + 1000 + i), 100.0 + i, 99.0 + i, "v2") for i in range(150)]  # error 1
    with JsonStub("/alerts") as receiver:
        env = service_env(
            AMQP_URL=amqp_url,
            QUEUE_PREFIX=prefix,
            LOGS_DIR=str(logs),
            MODEL_PATH=str(model_path),
            METRIC_PORT=str(free_port()),
            MAE_ALERT="5",
            ALERT_WEBHOOK_URL=receiver.url,
        )
        metric = ServiceProcess("metric_api", env, tmp_path).start()
        services = [metric]
        try:
            metric.wait_healthy()
            publish_rows(amqp_url, prefix, worse)
            wait_until(lambda: read_summary(metric.url)["count"] == 150, 30, "150 rows")
            wait_until(lambda: receiver.posted, 10, "the webhook to be called")
            summary = read_summary(metric.url)
            assert summary["alert"]["window"] == "last_100" and summary["alert"]["threshold"] == 5.0
            assert summary["alert"]["mae"] == 10.0 and summary["alert"]["since"] <= time.time()
            health = metric.health()
            assert health is not None and health.status_code == 200  # the service is fine; the model is not
            assert [s.value for s in scrape(metric.url)["model_mae_alert"]] == [1.0]
            assert summary["alerts"]["mae"]["state"] == "raised" and summary["alerts"]["mae"]["details"]["mae"] == 10.0
            assert "ALERT mae raised: the last_100 MAE is 10" in metric.output()

            publish_rows(amqp_url, prefix, better)
            wait_until(lambda: read_summary(metric.url)["count"] == 300, 30, "300 rows")
            wait_until(lambda: len(receiver.posted) >= 2, 10, "the webhook to be called again")
            # One payload shape for every alert (services/common/alerts.py), once per change of state.
            assert [(b["alert"], b["state"], b["service"]) for b in receiver.posted] == [
                ("mae", "raised", "metric_api"),
                ("mae", "cleared", "metric_api"),
            ]
            assert [b["details"]["window"] for b in receiver.posted] == ["last_100", "last_100"]
            assert receiver.posted[0]["details"]["mae"] == 10.0 and receiver.posted[1]["details"]["mae"] <= 5.0
            assert receiver.posted[0]["since"] == receiver.posted[0]["at"] <= receiver.posted[1]["at"]
            assert read_summary(metric.url)["alert"] is None
            assert [s.value for s in scrape(metric.url)["model_mae_alert"]] == [0.0]

            rows = pd.read_csv(logs / "metric_log.csv", dtype={"id": str})
            versions = {sample_id: version for sample_id, _t, _p, version in worse + better}
            summary = read_summary(metric.url)
            assert_agrees_with_the_csv(summary, rows, training_mean(model_path), versions)
            assert summary["by_model_version"]["v1"]["mae"] == 10.0 and summary["by_model_version"]["v2"]["mae"] == 1.0

            # Restarted, it rebuilds the versions from its state and the alert stays cleared.
            stop_all([metric])
            metric = ServiceProcess("metric_api", env, tmp_path).start()
            services = [metric]
            metric.wait_healthy()
            assert_agrees_with_the_csv(read_summary(metric.url), rows, training_mean(model_path), versions)
            assert len(receiver.posted) == 2
        finally:
            stop_all(services)
            delete_queues(amqp_url, prefix)
