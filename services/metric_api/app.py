"""metric_api: joins y_true and y_pred by id and appends one CSV row per id."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict, cast

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from prometheus_client import Counter, Gauge

from services.common.amqp.consumer import BatchConsumer, Delivery, HandBack, Rejection
from services.common.amqp.link import BrokerLink, Link
from services.common.amqp.topology import Y_PRED, Y_TRUE
from services.common.http import service_app
from services.common.messages import LabelMessage, PredictionMessage
from services.common.settings import Settings, get_settings
from services.metric_api.join import Kind
from services.metric_api.ledger import MetricLedger, StorageErrors
from services.metric_api.monitor import QualityMonitor
from services.metric_api.stats import RECENT_ROWS_SERVED

log = logging.getLogger(__name__)

ROWS_WRITTEN = Counter("metric_rows_written", "Rows appended to metric_log.csv")
DUPLICATE_HALVES = Counter("metric_duplicate_halves", "Halves seen again (redeliveries, repeated publishes)")
ORPHANS = Counter("metric_orphan_halves", "Halves whose partner did not come within ORPHAN_TTL_S", ["kind"])
PENDING = Gauge("metric_pending_halves", "Halves waiting for their partner", ["kind"])
RETRY_S = 2.0


class MetricService:
    """Labels and predictions come in batches from one consumer; each batch is recorded in the
    ledger (joined, appended with fsync, committed) and only then acked."""

    def __init__(self, settings: Settings, link: Link | None = None) -> None:
        self.settings = settings
        self.ledger = MetricLedger(settings.LOGS_DIR)
        self.quality = QualityMonitor(settings)
        self.storage_problem: str | None = f"{self.ledger.csv.path} not opened yet"
        self._kinds: dict[str, Kind] = {settings.queue(Y_TRUE): "y_true", settings.queue(Y_PRED): "y_pred"}
        self.consumer = BatchConsumer(self._record_batch, recover=self._open_until_ok)
        self.consumer.subscribe(settings.queue(Y_TRUE), LabelMessage)
        self.consumer.subscribe(settings.queue(Y_PRED), PredictionMessage)
        self.link = link or BrokerLink(settings, "metric_api", consumers=[self.consumer])
        # The ledger is used from one thread at a time: the batch worker's or the orphan sweep's.
        self._ledger_lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        PENDING.labels(kind="y_true").set_function(lambda: self.ledger.pending("y_true"))
        PENDING.labels(kind="y_pred").set_function(lambda: self.ledger.pending("y_pred"))

    def problem(self) -> str | None:
        return self.storage_problem or self.link.problem()

    async def start(self) -> None:
        if self.quality.baseline.problem:
            log.warning("%s; baseline_mae and skill stay null", self.quality.baseline.problem)
        await self._open_until_ok()
        self._sweeper = asyncio.create_task(self._sweep_orphans(), name="metric-orphans")
        self.link.start()

    async def _open_until_ok(self) -> None:
        """Open the ledger and rebuild the statistics; while the storage refuses, retry every RETRY_S."""
        while True:
            core = self.quality.new_core()
            try:
                async with self._ledger_lock:
                    await asyncio.to_thread(self.ledger.open, core)
            except StorageErrors as exc:
                problem = f"cannot use {self.settings.LOGS_DIR}: {exc}"
                if problem != self.storage_problem:
                    log.error("%s; retrying every %ss", problem, RETRY_S)
                self.storage_problem = problem
            else:
                self.quality.replace(core, time.time())
                self.storage_problem = None
                return
            await asyncio.sleep(RETRY_S)

    async def _record_batch(self, batch: list[Delivery[Any]]) -> list[Rejection]:
        halves = [(self._kinds[delivery.queue], delivery.message) for delivery in batch]
        try:
            async with self._ledger_lock:
                recorded = await asyncio.to_thread(self.ledger.record, halves, time.time())
        except StorageErrors as exc:
            self.storage_problem = f"cannot write to {self.settings.LOGS_DIR}: {exc}"
            raise HandBack(self.storage_problem) from exc
        self.quality.add_rows(recorded.rows, time.time())
        ROWS_WRITTEN.inc(len(recorded.rows))
        DUPLICATE_HALVES.inc(recorded.duplicates)
        return [(batch[index], reason) for index, reason in recorded.conflicts]

    async def _sweep_orphans(self) -> None:
        period = min(60.0, self.settings.ORPHAN_TTL_S / 4)
        while True:
            await asyncio.sleep(period)
            if self.storage_problem is not None:
                continue
            try:
                async with self._ledger_lock:
                    orphans = await asyncio.to_thread(self.ledger.sweep_orphans, time.time() - self.settings.ORPHAN_TTL_S)
            except StorageErrors as exc:
                log.error("cannot write %s: %s; will try again", self.ledger.orphan_log, exc)
                continue
            for orphan in orphans:
                ORPHANS.labels(kind=orphan.kind).inc()
            if orphans:
                log.warning(
                    "%d halves had no partner within %ss; written to %s",
                    len(orphans), self.settings.ORPHAN_TTL_S, self.ledger.orphan_log,
                )  # fmt: skip

    async def stop(self) -> None:
        await self.link.close()  # the consumer finishes the batch in hand first
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        async with self._ledger_lock:
            self.ledger.close()
        await self.quality.close()


class State(TypedDict):
    metric: MetricService


def create_app(settings: Settings | None = None, link: Link | None = None) -> FastAPI:
    """The metric_api app; ``link`` replaces the broker connection (in-process tests)."""
    settings = settings or get_settings()
    service = MetricService(settings, link)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        starting = asyncio.create_task(service.start(), name="metric-start")
        try:
            yield {"metric": service}
        finally:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await service.stop()

    app = service_app("metric_api", lifespan, service.problem, service.link.details)
    app.include_router(router)
    return app


async def get_service(request: Request) -> MetricService:
    return cast(MetricService, request.state.metric)  # put there by the lifespan's state


Service = Annotated[MetricService, Depends(get_service)]
router = APIRouter(prefix="/metrics", tags=["metrics"])


@router.get("/summary", response_class=Response, responses={200: {"content": {"application/json": {}}}})
async def summary(service: Service) -> Response:
    """count, mae, rmse; per window and per model version the twelve numbers docs/monitoring.md
    lists; the join, latency, alert and baseline. Numbers are never NaN (null instead)."""
    ledger = service.ledger
    join = {
        "pending_y_true": ledger.pending("y_true"),
        "pending_y_pred": ledger.pending("y_pred"),
        "orphans": ledger.orphans,
        "dead_lettered": service.consumer.dead_lettered,
    }
    body = service.quality.summary(join, str(ledger.csv.path), time.time())
    return Response(body, media_type="application/json")


@router.get("/recent")
async def recent(service: Service, limit: Annotated[int, Query(ge=1, le=RECENT_ROWS_SERVED)] = 10) -> list[dict[str, Any]]:
    return [
        {"id": row.id, "y_true": row.y_true, "y_pred": row.y_pred, "absolute_error": row.absolute_error}
        for row in service.quality.core.last(limit)
    ]
