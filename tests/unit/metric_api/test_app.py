"""metric_api's app in process, its broker link a stand-in: the summary and recent rows of a CSV
already there, /health on a LOGS_DIR it cannot use, and the batch handler behind the two queues
fed in-memory deliveries (the real broker runs the same path in tests/integration and tests/faults)."""

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from httpx import AsyncClient, Response

from services.common.amqp.consumer import Delivery
from services.common.files import METRIC_LOG
from services.common.messages import LabelMessage, PredictionMessage, SampleMessage
from services.common.metric_rows import parse_row
from services.common.settings import Settings
from services.metric_api.app import MetricService, create_app, summary_of
from tests.unit.in_process import in_process
from tests.unit.metric_log import append, metric_rows
from tests.unit.stand_in_link import StandInLink


def settings(logs: Path) -> Settings:
    return Settings(LOGS_DIR=logs, QUEUE_PREFIX="t.", BASELINE_MEAN=150.0)


async def healthy(client: AsyncClient, within_s: float = 10) -> Response:
    """/health once it answers 200 (the ledger opened), or its last answer after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        answer = await client.get("/health")
        if answer.status_code == 200 or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.02)


def test_the_summary_and_recent_rows_of_a_csv_already_there(tmp_path: Path) -> None:
    rows = metric_rows(0, 50, seed=3)
    append(tmp_path / METRIC_LOG, rows)

    async def scenario(client: AsyncClient) -> list[Response]:
        await healthy(client)
        return [await client.get(path) for path in ("/metrics/summary", "/metrics/recent?limit=3", "/metrics/recent")]

    summary, recent, default = in_process(create_app(settings(tmp_path), StandInLink()), scenario)
    errors = np.array([row.absolute_error for row in rows])
    assert summary.json()["count"] == 50
    assert summary.json()["mae"] == pytest.approx(errors.mean(), rel=1e-12)
    assert summary.json()["rmse"] == pytest.approx(np.sqrt((errors**2).mean()), rel=1e-12)
    assert recent.json() == [
        {"id": r.id, "y_true": r.y_true, "y_pred": r.y_pred, "absolute_error": r.absolute_error} for r in rows[-3:]
    ]
    assert len(default.json()) == 10


@pytest.mark.parametrize("limit", ["0", "1001", "ten"])
def test_recent_refuses_a_limit_outside_1_to_1000(tmp_path: Path, limit: str) -> None:
    async def scenario(client: AsyncClient) -> Response:
        return await client.get(f"/metrics/recent?limit={limit}")

    answer = in_process(create_app(settings(tmp_path), StandInLink()), scenario)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["query", "limit"]


def test_a_logs_dir_it_cannot_use_is_a_503_naming_it(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "logs"
    not_a_folder.write_text("a file where the folder should be")

    async def scenario(client: AsyncClient) -> Response:
        await asyncio.sleep(0.3)
        return await client.get("/health")

    answer = in_process(create_app(settings(not_a_folder), StandInLink()), scenario)
    assert answer.status_code == 503
    assert str(not_a_folder) in answer.json()["reason"]


class Raw:
    redelivered = False


def delivery(message: SampleMessage, queue: str) -> Delivery[Any]:
    # The arg-type ignore below: Raw stands in for aiormq's DeliveredMessage; the handler reads only .redelivered
    return Delivery(message, Raw(), queue, 0.0)  # type: ignore[arg-type]


def label(n: int, value: float) -> Delivery[Any]:
    return delivery(LabelMessage(id=f"1700000000.{n:06d}", body=value), "t.y_true")


def prediction(n: int, value: float) -> Delivery[Any]:
    return delivery(PredictionMessage(id=f"1700000000.{n:06d}", body=value, model_version="v1"), "t.y_pred")


def test_the_batch_handler_joins_halves_once_and_refuses_a_contradiction(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        service = MetricService(settings(tmp_path), StandInLink())
        await service.start()
        try:
            first = await service._record_batch([label(1, 151.0), prediction(2, 90.0), prediction(1, 150.5)])
            again = await service._record_batch([label(1, 151.0), prediction(1, 150.5), label(2, 100.0)])
            contradiction = await service._record_batch([label(2, 101.0)])
            return first, again, contradiction
        finally:
            await service.stop()

    first, again, contradiction = asyncio.run(scenario())
    assert first == [] and again == []
    ((refused, reason),) = contradiction
    assert refused.message.id == "1700000000.000002" and "1700000000.000002" in reason and "100.0" in reason
    lines = (tmp_path / METRIC_LOG).read_text().splitlines()
    assert lines[0] == "id,y_true,y_pred,absolute_error"
    assert [parse_row(line) for line in lines[1:]] == [
        parse_row("1700000000.000001,151.0,150.5,0.5"),
        parse_row("1700000000.000002,100.0,90.0,10.0"),
    ]


def test_a_csv_deleted_between_batches_is_made_whole_and_health_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file watch notices before any batch comes; a batch would notice before its append."""
    monkeypatch.setattr("services.metric_api.app.FILE_CHECK_S", 0.05, raising=False)
    csv = tmp_path / METRIC_LOG

    async def scenario() -> tuple[dict[str, Any], list[Any], int]:
        service = MetricService(settings(tmp_path), StandInLink())
        await service.start()
        try:
            await service._record_batch([label(n, 100.0 + n) for n in range(1, 6)] + [prediction(n, 90.0) for n in range(1, 6)])
            csv.unlink()
            for _ in range(200):
                if csv.exists() and service.last_repair:
                    break
                await asyncio.sleep(0.02)
            refused = await service._record_batch([label(6, 106.0), prediction(6, 90.0)])
            return service.health_details(), refused, service.quality.core.count
        finally:
            await service.stop()

    details, refused, count = asyncio.run(scenario())
    assert refused == [] and count == 6
    assert f"{csv} was deleted or moved away" in details["files_repaired"] and "(5 rows)" in details["files_repaired"]
    assert [parse_row(line).id for line in csv.read_text().splitlines()[1:]] == [f"1700000000.{n:06d}" for n in range(1, 7)]


def test_a_csv_truncated_under_a_batch_is_made_whole_before_the_batch_is_written(tmp_path: Path) -> None:
    csv = tmp_path / METRIC_LOG

    async def scenario() -> int:
        service = MetricService(settings(tmp_path), StandInLink())
        await service.start()
        try:
            await service._record_batch([label(n, 100.0 + n) for n in range(1, 4)] + [prediction(n, 90.0) for n in range(1, 4)])
            csv.write_bytes(b"")  # : > metric_log.csv, just before the next batch
            await service._record_batch([label(4, 104.0), prediction(4, 90.0)])
            return service.quality.core.count
        finally:
            await service.stop()

    assert asyncio.run(scenario()) == 4
    lines = csv.read_text().splitlines()
    assert lines[0] == "id,y_true,y_pred,absolute_error"
    assert [parse_row(line).id for line in lines[1:]] == [f"1700000000.{n:06d}" for n in range(1, 5)]


def test_the_dead_lettered_count_survives_a_restart(tmp_path: Path) -> None:
    async def dead_letter_some() -> None:
        service = MetricService(settings(tmp_path), StandInLink())
        await service.start()
        try:
            # What the consumer tells, and awaits, after each dead-lettering: the count is saved by then.
            await service.count_dead_lettered(3)
            await service.count_dead_lettered(1)
        finally:
            await service.stop()

    asyncio.run(dead_letter_some())

    async def scenario(client: AsyncClient) -> Response:
        await healthy(client)
        return await client.get("/metrics/summary")

    summary = in_process(create_app(settings(tmp_path), StandInLink()), scenario)
    assert summary.json()["join"]["dead_lettered"] == 4


class StoppedClock:
    """The wall clock as the service reads it, moved on by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_summary_says_which_share_of_predictions_has_its_label_how_late_and_what_waits(tmp_path: Path) -> None:
    clock = StoppedClock(1_700_000_000.0)

    async def scenario() -> dict[str, Any]:
        service = MetricService(Settings(LOGS_DIR=tmp_path, QUEUE_PREFIX="t.", ORPHAN_TTL_S=60.0), StandInLink(), clock)
        await service.start()
        try:
            await service._record_batch([prediction(n, 100.0) for n in range(1, 5)])
            clock.now += 90.0  # the predictions' ORPHAN_TTL_S passes
            async with service._ledger_lock:  # the count the service makes every few seconds, made now
                service.ledger.survey(clock())
            await service._record_batch([label(1, 110.0), label(9, 1.0)])  # a late label; a label for no prediction yet
            async with service._ledger_lock:
                service.ledger.survey(clock())
            return dict(json.loads(summary_of(service)))
        finally:
            await service.stop()

    answer = asyncio.run(scenario())
    labels, join = answer["labels"], answer["join"]
    assert (labels["predictions"], labels["labelled"], labels["labelled_share"]) == (4, 1, 0.25)
    assert labels["lag_p50_s"] == labels["lag_p99_s"] == 90.0  # the one label came 90 s after its prediction
    assert labels["waiting"]["y_pred"] == {"<10s": 0, "10s-1m": 0, "1m-10m": 3, "10m-1h": 0, "1h-1d": 0, ">1d": 0}
    assert labels["waiting"]["y_true"]["<10s"] == 1
    assert join["late_joins"] == 1 and join["orphans"] == 3 and join["pending_y_pred"] == 0 and join["pending_y_true"] == 1
