"""metric_api: joins y_true and y_pred by id and appends one CSV row per id."""

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from prometheus_client import Counter, Gauge

from services.common.batching import next_batch, wait_until_empty
from services.common.broker import Y_PRED, Y_TRUE, BrokerLink, ConfirmedPublisher, QueueConsumer
from services.common.files import METRIC_LOG, METRIC_STATE, ORPHAN_LOG
from services.common.metric_rows import ORPHAN_LOG_HEADER, MetricRow, Orphan, format_orphan
from services.common.http import service_app
from services.common.messages import LabelMessage, PredictionMessage, SampleMessage
from services.common.settings import Settings, get_settings
from services.metric_api.csvlog import MetricLog, MetricLogError, append_with_header
from services.metric_api.join import Conflict, Duplicate, Joined, Kind, LabelPredictionJoin
from services.metric_api.monitor import QualityMonitor
from services.metric_api.stats import LAST_5M_S, RECENT_ROWS, QualityStats
from services.metric_api.store import SqliteHalfStore

log = logging.getLogger(__name__)

ROWS_WRITTEN = Counter("metric_rows_written", "Rows appended to metric_log.csv")
DUPLICATE_HALVES = Counter("metric_duplicate_halves", "Halves seen again (redeliveries, repeated publishes)")
ORPHANS = Counter("metric_orphan_halves", "Halves whose partner did not come within ORPHAN_TTL_S", ["kind"])
PENDING = Gauge("metric_pending_halves", "Halves waiting for their partner", ["kind"])
RETRY_S = 2.0
READ_CHUNK_ROWS = 10_000  # CSV rows folded into the statistics at a time at start-up
StorageErrors = (OSError, MetricLogError, sqlite3.Error)


@dataclass
class Half:
    kind: Kind
    message: SampleMessage
    delivery: AbstractIncomingMessage
    consumer: QueueConsumer[Any]


@dataclass
class BatchResult:
    rows: list[MetricRow] = field(default_factory=list)
    done: list[Half] = field(default_factory=list)
    conflicts: list[tuple[Half, str]] = field(default_factory=list)


class MetricService:
    """Halves go into an inbox; one worker takes them in batches, and for each batch
    updates the state, appends the joined rows (fsync), commits, and only then acks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.csv = MetricLog(settings.LOGS_DIR / METRIC_LOG)
        self.orphan_log = settings.LOGS_DIR / ORPHAN_LOG
        self.store: SqliteHalfStore | None = None
        self.stats = QualityMonitor(settings)
        self.storage_problem: str | None = f"{self.csv.path} not opened yet"
        self.link = BrokerLink(settings, "metric_api", self._on_connect)
        self.consumers: list[QueueConsumer[Any]] = []
        self._inbox: asyncio.Queue[Half] = asyncio.Queue()
        self._state_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._suspended = False
        self.orphans = 0
        PENDING.labels(kind="y_true").set_function(lambda: self.pending("y_true"))
        PENDING.labels(kind="y_pred").set_function(lambda: self.pending("y_pred"))

    def pending(self, kind: Kind) -> int:
        return self.store.held_count[kind] if self.store else 0

    def problem(self) -> str | None:
        return self.storage_problem or self.link.problem()

    @property
    def dead_lettered(self) -> int:
        return sum(consumer.dead_lettered for consumer in self.consumers)

    # -- storage
    def _open(self) -> QualityStats:
        """Open the CSV and the state, make the state agree with the CSV, and rebuild the
        statistics: ``all`` and the windows from the CSV (the one full read), the model
        versions and join times from the state."""
        self.settings.LOGS_DIR.mkdir(parents=True, exist_ok=True)
        store = SqliteHalfStore(self.settings.LOGS_DIR / METRIC_STATE)
        try:
            stats = self.stats.new_core()
            known = store.counter("csv_rows")
            new_rows: list[MetricRow] = []
            chunk: list[MetricRow] = []
            newest_ids: deque[str] = deque(maxlen=stats.ring.capacity)
            count = 0
            self.csv.open_for_append()
            for row in self.csv.rows():
                count += 1
                chunk.append(row)
                newest_ids.append(row.id)
                if count > known:
                    new_rows.append(row)
                if len(chunk) == READ_CHUNK_ROWS:
                    stats.add_history(chunk)
                    chunk = []
            stats.add_history(chunk)
            store.begin()
            if count < known:
                log.warning("%s has fewer rows (%d) than recorded (%d): re-reading it", self.csv.path, count, known)
                store.forget_written()
                new_rows = list(self.csv.rows())
            store.record_rows_of_csv(new_rows)
            store.set_counter("csv_rows", count)
            store.commit()
            for version, y_true, y_pred in store.written_by_version():
                stats.add_version_rows(version, y_true, y_pred)
            stats.set_times_of_last(store.written_times(list(newest_ids), since=time.time() - LAST_5M_S))
        except BaseException:
            store.close()
            self.csv.close()
            raise
        if self.store is not None:
            self.store.close()
        self.store, self.storage_problem = store, None
        self.orphans = store.counter("orphans")
        log.info("%s holds %d rows; %s halves wait for their partner", self.csv.path, stats.count, store.held_count)
        return stats

    async def _open_until_ok(self) -> None:
        while True:
            try:
                async with self._state_lock:
                    self.stats.replace(await asyncio.to_thread(self._open), time.time())
                return
            except StorageErrors as exc:
                problem = f"cannot use {self.settings.LOGS_DIR}: {exc}"
                if problem != self.storage_problem:
                    log.error("%s; retrying every %ss", problem, RETRY_S)
                self.storage_problem = problem
            await asyncio.sleep(RETRY_S)

    async def start(self) -> None:
        if self.stats.baseline.problem:
            log.warning("%s; baseline_mae and skill stay null", self.stats.baseline.problem)
        await self._open_until_ok()
        self._tasks = [
            asyncio.create_task(self._work(), name="metric-batches"),
            asyncio.create_task(self._sweep_orphans(), name="metric-orphans"),
        ]
        self.link.start()

    # -- broker
    async def _on_connect(self, _connection: AbstractRobustConnection) -> None:
        dead_letters = ConfirmedPublisher(await self.link.channel(), self.settings.PUBLISH_TIMEOUT_S)
        self.consumers = [
            QueueConsumer(self.settings.queue(Y_TRUE), LabelMessage, self._take_label, dead_letters),
            QueueConsumer(self.settings.queue(Y_PRED), PredictionMessage, self._take_prediction, dead_letters),
        ]
        for consumer in self.consumers:
            await consumer.start(await self.link.channel(prefetch=self.settings.PREFETCH))

    async def _take_label(self, message: SampleMessage, delivery: AbstractIncomingMessage) -> None:
        await self._inbox.put(Half("y_true", message, delivery, self.consumers[0]))

    async def _take_prediction(self, message: SampleMessage, delivery: AbstractIncomingMessage) -> None:
        await self._inbox.put(Half("y_pred", message, delivery, self.consumers[1]))

    # -- the batch worker
    async def _work(self) -> None:
        while True:
            await self._process(await next_batch(self._inbox))

    async def _process(self, batch: list[Half]) -> None:
        if self._suspended:
            await self._settle(batch, requeue=True)
            return
        try:
            async with self._state_lock:
                result = await asyncio.to_thread(self._apply, batch)
        except StorageErrors as exc:
            await self._suspend(f"cannot write to {self.settings.LOGS_DIR}: {exc}", batch)
            return
        except Exception:  # noqa: BLE001 - the worker must outlive a bad batch; redelivery retries it
            log.exception("joining a batch of %d failed; handing it back", len(batch))
            await self._settle(batch, requeue=True)
            return
        self.stats.add_rows(result.rows, time.time())
        ROWS_WRITTEN.inc(len(result.rows))
        await self._settle(result.done)
        for half, reason in result.conflicts:
            await half.consumer.dead_letter(half.delivery, reason)

    async def _settle(self, halves: list[Half], *, requeue: bool | None = None) -> None:
        """Ack (or nack) halves through their consumers: one write, multiple=True where safe."""
        await asyncio.gather(
            *(
                consumer.settle([half.delivery for half in halves if half.consumer is consumer], requeue=requeue)
                for consumer in {half.consumer for half in halves}
            )
        )

    def _apply(self, batch: list[Half]) -> BatchResult:
        """One transaction: join every half, append the rows (fsync), commit. Runs in a thread."""
        assert self.store is not None
        join = LabelPredictionJoin(self.store)
        result = BatchResult()
        now = time.time()
        self.store.begin()
        try:
            for half in batch:
                message = half.message
                outcome = join.add(
                    half.kind, message.id, message.body, now, ts=message.ts, model_version=getattr(message, "model_version", None)
                )
                if isinstance(outcome, Conflict):
                    result.conflicts.append((half, outcome.reason))
                    continue
                if isinstance(outcome, Joined):
                    result.rows.append(outcome.row)
                elif isinstance(outcome, Duplicate):
                    DUPLICATE_HALVES.inc()
                result.done.append(half)
            if result.rows:
                self.csv.append(result.rows)
                self.store.add_to_counter("csv_rows", len(result.rows))
            self.store.commit()
        except BaseException:
            self.store.rollback()
            raise
        return result

    async def _suspend(self, problem: str, batch: list[Half]) -> None:
        """Storage failed: hand the batch back, stop consuming, and retry until it works."""
        log.error("%s; pausing consumption until it can be written again", problem)
        self.storage_problem = problem
        self._suspended = True
        for consumer in self.consumers:
            await consumer.pause()
        await self._settle(batch, requeue=True)
        self._tasks.append(asyncio.create_task(self._recover(), name="metric-recover"))

    async def _recover(self) -> None:
        await asyncio.sleep(RETRY_S)
        await self._open_until_ok()
        self._suspended = False
        for consumer in self.consumers:
            await consumer.resume()
        log.info("%s writable again; consuming", self.settings.LOGS_DIR)

    # -- orphans
    async def _sweep_orphans(self) -> None:
        period = min(60.0, self.settings.ORPHAN_TTL_S / 4)
        while True:
            await asyncio.sleep(period)
            if self._suspended:
                continue
            try:
                async with self._state_lock:
                    await asyncio.to_thread(self._write_orphans, time.time() - self.settings.ORPHAN_TTL_S)
            except StorageErrors as exc:
                log.error("cannot write %s: %s; will try again", self.orphan_log, exc)

    def _write_orphans(self, arrived_before: float) -> None:
        assert self.store is not None
        # Look first: the batch worker is kept out by _state_lock, and an empty sweep then
        # costs no write transaction (and no recount of the held halves on its rollback).
        orphans = self.store.expired(arrived_before)
        if not orphans:
            return
        self.store.begin()
        try:
            lines = [format_orphan(Orphan(*orphan)) for orphan in orphans]
            append_with_header(self.orphan_log, ORPHAN_LOG_HEADER, lines)
            for sample_id, kind, _value, _arrived_at in orphans:
                self.store.release(sample_id, kind)  # type: ignore[arg-type]
                ORPHANS.labels(kind=kind).inc()
            self.store.add_to_counter("orphans", len(orphans))
            self.store.commit()
        except BaseException:
            self.store.rollback()
            raise
        self.orphans += len(orphans)
        log.warning("%d halves had no partner within %ss; written to %s", len(orphans), self.settings.ORPHAN_TTL_S, self.orphan_log)

    async def stop(self) -> None:
        for consumer in self.consumers:
            await consumer.stop()
        await wait_until_empty(self._inbox)
        async with self._state_lock:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.link.close()
        await self.stats.close()
        self.csv.close()
        if self.store is not None:
            self.store.close()


class State(TypedDict):
    metric: MetricService


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    service = MetricService(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        starting = asyncio.create_task(service.start(), name="metric-start")
        try:
            yield {"metric": service}
        finally:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await service.stop()

    app = service_app("metric_api", lifespan, service.problem)
    app.include_router(router)
    return app


async def get_service(request: Request) -> MetricService:
    return request.state.metric


Service = Annotated[MetricService, Depends(get_service)]
router = APIRouter(prefix="/metrics", tags=["metrics"])


@router.get("/summary", response_class=Response, responses={200: {"content": {"application/json": {}}}})
async def summary(service: Service) -> Response:
    """count, mae, rmse; per window and per model version the twelve numbers of README
    "Model quality"; the join, latency, alert and baseline. Numbers are never NaN (null instead)."""
    join = {
        "pending_y_true": service.pending("y_true"),
        "pending_y_pred": service.pending("y_pred"),
        "orphans": service.orphans,
        "dead_lettered": service.dead_lettered,
    }
    body = service.stats.summary(join, str(service.csv.path), time.time())
    return Response(body, media_type="application/json")


@router.get("/recent")
async def recent(service: Service, limit: Annotated[int, Query(ge=1, le=RECENT_ROWS)] = 10) -> list[dict[str, Any]]:
    return [
        {"id": row.id, "y_true": row.y_true, "y_pred": row.y_pred, "absolute_error": row.absolute_error}
        for row in service.stats.core.last(limit)
    ]
