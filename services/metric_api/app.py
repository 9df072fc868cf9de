"""metric_api: joins y_true and y_pred by id and appends one CSV row per id."""

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, BinaryIO, TypedDict, cast

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Gauge

from services.common.amqp.consumer import BatchConsumer, Delivery, HandBack, Rejection
from services.common.amqp.link import BrokerLink, Link
from services.common.amqp.topology import Y_PRED, Y_TRUE, shard_queue
from services.common.contracts.by_time import BY_TIME_ROUTE, ByTime
from services.common.contracts.rows_feed import REPLACED_STATUS, ROWS_MAX_BYTES, ROWS_ROUTE, RowsChunk
from services.common.contracts.summary import SUMMARY_ROUTE, Summary
from services.common.http.app import service_app
from services.common.messages import LabelMessage, PredictionMessage
from services.common.settings import Settings, get_settings
from services.common.snapshots import SNAPSHOT_PERIOD_S
from services.metric_api.join import Kind
from services.metric_api.ledger import SWEEP_CHUNK, LedgerFilesChanged, MetricLedger, StorageErrors
from services.metric_api.monitor import QualityMonitor, Waiting
from services.metric_api.rows_feed import read_open_chunk
from services.metric_api.stats import RECENT_ROWS_SERVED

log = logging.getLogger(__name__)

ROWS_WRITTEN = Counter("metric_rows_written", "Rows appended to metric_log.csv")
LOG_ROTATIONS = Counter(
    "metric_log_rotations", "Times metric_log.csv passed METRIC_LOG_MAX_BYTES and was renamed with its generation"
)
DUPLICATE_HALVES = Counter("metric_duplicate_halves", "Halves seen again (redeliveries, repeated publishes)")
ORPHANS = Counter("metric_orphan_halves", "Halves counted orphans: no partner within ORPHAN_TTL_S (still held)", ["kind"])
LATE_JOINS = Counter("metric_late_joins", "Rows whose first half had already been counted an orphan")
PENDING = Gauge("metric_pending_halves", "Halves waiting for their partner, not yet past ORPHAN_TTL_S", ["kind"])
ORPHANS_NOW = Gauge("metric_orphans_waiting", "Halves waiting for their partner past ORPHAN_TTL_S", ["kind"])
EXPIRED = Counter("metric_expired_halves", "Halves that waited past HALF_RETENTION_S: moved to expired_halves.log", ["kind"])
FORGOTTEN_IDS = Counter("metric_forgotten_ids", "Ids forgotten: written past WRITTEN_HORIZON_S, expired past HALF_RETENTION_S")
RETRY_S = 2.0
SWEEP_PERIOD_S = 60.0  # halves past HALF_RETENTION_S expired and ids past WRITTEN_HORIZON_S forgotten this often
# The waiting halves are counted this often (and orphans.csv rewritten at most every LIST_PERIOD_S),
# both at most every ORPHAN_TTL_S / 4; a count that takes long (millions waiting) is made less often.
SURVEY_PERIOD_S = 5.0
LIST_PERIOD_S = 60.0
SURVEY_SHARE = 0.02  # of the ledger's time, at most
FILES_REPAIRED = Counter(
    "metric_files_repaired", "Times metric_log.csv or the state was deleted, moved or truncated, and made whole"
)
# How often an idle service looks whether its files are still the ones it writes (a batch always looks first).
FILE_CHECK_S = 2.0
# A shard's metric_api that was delivered no halves for this long may be its standby (/health says so).
ACTIVE_WITHIN_S = 60.0


class MetricService:
    """Labels and predictions come in batches from one consumer; each batch is recorded in the
    ledger (joined, appended with fsync, committed) and only then acked."""

    def __init__(self, settings: Settings, link: Link | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock  # the wall-clock time: when a half came, a row was joined, a half became an orphan
        self.ledger = MetricLedger(
            settings.LOGS_DIR,
            settings.ORPHAN_TTL_S,
            settings.HALF_RETENTION_S,
            settings.WRITTEN_HORIZON_S,
            settings.segment_keys,
            settings.METRIC_LOG_MAX_BYTES,
        )
        self.quality = QualityMonitor(settings)
        self.storage_problem: str | None = f"{self.ledger.csv.path} not opened yet"
        self.last_repair: str | None = None  # what happened to the files the last time they were repaired
        # This process owns one shard of the join (the only one when METRIC_SHARDS is 1): its two queues.
        labels, predictions = (shard_queue(settings, kind, settings.METRIC_SHARD) for kind in (Y_TRUE, Y_PRED))
        self._kinds: dict[str, Kind] = {labels: "y_true", predictions: "y_pred"}
        self.consumer = BatchConsumer(self._record_batch, recover=self._open_until_ok, on_dead_lettered=self.count_dead_lettered)
        self._dead_lettered_unsaved = 0
        self._saving_dead_lettered: asyncio.Task[None] | None = None
        self.last_delivery_at: float | None = None  # monotonic
        self.consumer.subscribe(labels, LabelMessage)
        self.consumer.subscribe(predictions, PredictionMessage)
        self.link = link or BrokerLink(settings, "metric_api", consumers=[self.consumer])
        # The ledger is used from one thread at a time: the batch worker's, the orphan sweep's, the file watch's...
        self._ledger_lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._file_watch: asyncio.Task[None] | None = None
        self._snapshots: asyncio.Task[None] | None = None
        self._bounds: asyncio.Task[None] | None = None
        self._snapshot_of: tuple[int, ...] | None = None  # what the last snapshot written covered
        PENDING.labels(kind="y_true").set_function(lambda: self.ledger.pending("y_true"))
        PENDING.labels(kind="y_pred").set_function(lambda: self.ledger.pending("y_pred"))
        ORPHANS_NOW.labels(kind="y_true").set_function(lambda: self.ledger.orphans_by_kind["y_true"])
        ORPHANS_NOW.labels(kind="y_pred").set_function(lambda: self.ledger.orphans_by_kind["y_pred"])

    def problem(self) -> str | None:
        return self.storage_problem or self.link.problem()

    def health_details(self) -> dict[str, Any]:
        """What /health adds: the broker connected to, the shard and this process's role in it,
        and what the last repair of the files was."""
        return {
            **self.link.details(),
            **(self.shard_details() if self.settings.METRIC_SHARDS > 1 else {}),
            **({"files_repaired": self.last_repair} if self.last_repair else {}),
        }

    def _since_delivery(self) -> float | None:
        return None if self.last_delivery_at is None else time.monotonic() - self.last_delivery_at

    def standing_by(self) -> bool:
        since = self._since_delivery()
        return self.settings.METRIC_SHARDS > 1 and (since is None or since >= ACTIVE_WITHIN_S)

    def shard_details(self) -> dict[str, Any]:
        """Which shard this process owns, and whether it is joining: the broker delivers a shard's
        halves to one consumer at a time (x-single-active-consumer), so a second metric_api of the
        same shard is connected and healthy but given nothing: a standby, which takes over when the
        active one goes. The broker does not tell a consumer which it is; a metric_api delivered
        nothing for ACTIVE_WITHIN_S is the standby, or the active one of an idle shard."""
        since = self._since_delivery()
        return {
            "shard": self.settings.METRIC_SHARD,
            "shards": self.settings.METRIC_SHARDS,
            "role": "standby" if self.standing_by() else "active",
            "last_delivery_s_ago": None if since is None else round(since, 1),
        }

    @property
    def dead_lettered(self) -> int:
        """Messages dead-lettered since the state began (saved in it), not only by this process."""
        return self.ledger.dead_lettered + self._dead_lettered_unsaved

    async def start(self) -> None:
        if self.quality.baseline.problem:
            log.warning("%s; baseline_mae and skill stay null", self.quality.baseline.problem)
        await self._open_until_ok()
        self._sweeper = asyncio.create_task(self._survey_waiting(), name="metric-waiting")
        self._file_watch = asyncio.create_task(self._watch_files(), name="metric-file-watch")
        self._snapshots = asyncio.create_task(self._write_snapshots(), name="metric-snapshots")
        self._bounds = asyncio.create_task(self._sweep_often(), name="metric-bounds")
        self.link.start()

    async def _open_until_ok(self) -> None:
        """Open the ledger and rebuild the statistics; while the storage refuses, retry every RETRY_S."""
        while True:
            core = self.quality.new_core()
            try:
                async with self._ledger_lock:
                    await asyncio.to_thread(self.ledger.open, core, self.clock())
            except StorageErrors as exc:
                problem = f"cannot use {self.settings.LOGS_DIR}: {exc}"
                if problem != self.storage_problem:
                    log.error("%s; retrying every %ss", problem, RETRY_S)
                self.storage_problem = problem
            else:
                self.quality.replace(core, self.clock())
                self.storage_problem = None
                return
            await asyncio.sleep(RETRY_S)

    async def _record_batch(self, batch: list[Delivery[Any]]) -> list[Rejection]:
        self.last_delivery_at = time.monotonic()
        halves = [(self._kinds[delivery.queue], delivery.message) for delivery in batch]
        try:
            # The statistics take the rows under the same lock: a repair rebuilding them meanwhile would count them twice.
            async with self._ledger_lock:
                try:
                    recorded = await asyncio.to_thread(self.ledger.record, halves, self.clock())
                except LedgerFilesChanged as exc:
                    await self._repair_files(str(exc))
                    recorded = await asyncio.to_thread(self.ledger.record, halves, self.clock())
                self.quality.add_rows(recorded.rows, self.clock())
                self.quality.add_predictions(recorded.predicted_at, self.clock())
                self.quality.add_estimates(recorded.predictions)
        except StorageErrors as exc:
            self.storage_problem = f"cannot write to {self.settings.LOGS_DIR}: {exc}"
            raise HandBack(self.storage_problem) from exc
        ROWS_WRITTEN.inc(len(recorded.rows))
        if recorded.rotated:
            LOG_ROTATIONS.inc()
        DUPLICATE_HALVES.inc(recorded.duplicates)
        LATE_JOINS.inc(recorded.late_joins)
        return [(batch[index], reason) for index, reason in recorded.conflicts]

    async def _repair_files(self, what: str) -> None:
        """Reopen the ledger, which makes the CSV whole again from the state (and the state from
        the database in use); rebuild the statistics from them. Called under the ledger lock."""
        log.warning("%s while metric_api was writing it; making it whole again from the state", what)
        core = self.quality.new_core()
        await asyncio.to_thread(self.ledger.open, core, self.clock())
        self.quality.replace(core, self.clock())
        FILES_REPAIRED.inc()
        self.last_repair = f"{what}; made whole again at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ({core.count} rows)"

    async def _watch_files(self) -> None:
        """Between batches, look every FILE_CHECK_S whether the files are still the ones being written."""
        while True:
            await asyncio.sleep(FILE_CHECK_S)
            if self.storage_problem is not None or self.standing_by():
                continue  # a standby's files are written by the active metric_api of its shard: taken in when it takes over
            try:
                async with self._ledger_lock:
                    if (what := await asyncio.to_thread(self.ledger.changed)) is not None:
                        await self._repair_files(what)
            except StorageErrors as exc:
                log.error("cannot repair the files in %s: %s; will try again", self.settings.LOGS_DIR, exc)

    async def count_dead_lettered(self, count: int) -> None:
        """Dead-lettered messages are counted in the state before they are acked, so join.dead_lettered
        survives a restart, even a kill -9. A state that cannot be written now (a full disk) must not hold
        up the dead-letter queue: the count is then kept and saved in the background, retried."""
        self._dead_lettered_unsaved += count
        if self._saving_dead_lettered is None or self._saving_dead_lettered.done():
            self._saving_dead_lettered = asyncio.create_task(self._save_dead_lettered(), name="metric-dead-lettered")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._saving_dead_lettered), timeout=RETRY_S)

    async def _save_dead_lettered(self) -> None:
        while self._dead_lettered_unsaved:
            count = self._dead_lettered_unsaved
            try:
                async with self._ledger_lock:
                    total = await asyncio.to_thread(self.ledger.count_dead_lettered, count)
            except StorageErrors as exc:
                log.error("cannot count %d dead-lettered messages in the state: %s; will try again", count, exc)
                await asyncio.sleep(RETRY_S)
                continue
            self.ledger.dead_lettered, self._dead_lettered_unsaved = total, self._dead_lettered_unsaved - count

    async def _survey_waiting(self) -> None:
        """Count the waiting halves (orphans, ages) every few seconds; rewrite orphans.csv when its list changed."""
        ttl = self.settings.ORPHAN_TTL_S
        period = min(SURVEY_PERIOD_S, ttl / 4)
        list_period = min(LIST_PERIOD_S, ttl / 4)
        listed_at = -math.inf
        while True:
            await asyncio.sleep(period)
            if self.storage_problem is not None:
                continue
            started = time.monotonic()
            write_list = started - listed_at >= list_period
            try:
                async with self._ledger_lock:
                    survey = await asyncio.to_thread(self.ledger.survey, self.clock(), write_list=write_list)
            except StorageErrors as exc:
                log.error("cannot count the waiting halves or write %s: %s; will try again", self.ledger.orphan_log, exc)
                continue
            took = time.monotonic() - started
            period = max(min(SURVEY_PERIOD_S, ttl / 4), took / SURVEY_SHARE)
            if write_list:
                listed_at = started
            for kind, count in survey.newly_orphaned.items():
                ORPHANS.labels(kind=kind).inc(count)
            if newly := sum(survey.newly_orphaned.values()):
                log.warning(
                    "%d halves have had no partner for ORPHAN_TTL_S=%gs: counted orphans, listed in %s "
                    "(they stay held: a partner that comes later still makes the row)",
                    newly, ttl, self.ledger.orphan_log,
                )  # fmt: skip

    async def _sweep_often(self) -> None:
        """The bounds, kept every SWEEP_PERIOD_S (a tenth of HALF_RETENTION_S when that is shorter)."""
        period = min(SWEEP_PERIOD_S, self.settings.HALF_RETENTION_S / 10, self.settings.WRITTEN_HORIZON_S / 10)
        while True:
            await asyncio.sleep(period)
            if self.storage_problem is not None:
                continue
            try:
                await self._sweep()
            except StorageErrors as exc:
                log.error("cannot expire halves or forget ids in %s: %s; will try again", self.settings.LOGS_DIR, exc)

    async def _sweep(self) -> None:
        """Expire the halves past HALF_RETENTION_S and forget the ids past WRITTEN_HORIZON_S, a chunk
        per transaction (the lock is let go between chunks, so batches go on)."""
        while True:
            async with self._ledger_lock:
                expired = await asyncio.to_thread(self.ledger.expire, self.clock())
            for kind, count in expired.items():
                EXPIRED.labels(kind=kind).inc(count)
            if total := sum(expired.values()):
                log.info("%d halves waited past HALF_RETENTION_S: moved to %s", total, self.ledger.expired_log)
            if total < SWEEP_CHUNK:
                break
        while True:
            async with self._ledger_lock:
                forgotten = await asyncio.to_thread(self.ledger.forget, self.clock())
            FORGOTTEN_IDS.inc(forgotten)
            if forgotten < SWEEP_CHUNK:  # (up to twice SWEEP_CHUNK: written and expired ids)
                break

    async def _write_snapshots(self) -> None:
        """Every SNAPSHOT_PERIOD_S while rows come, a snapshot of the statistics and the CSV offset
        they cover: the next start reads only the CSV's tail (services/common/snapshots.py)."""
        while True:
            await asyncio.sleep(SNAPSHOT_PERIOD_S)
            await self.write_snapshot()

    async def write_snapshot(self) -> None:
        if self.storage_problem is not None:
            return
        try:
            async with self._ledger_lock:
                position = self.ledger.csv.position()
                if position is None or position == self._snapshot_of:
                    return
                snapshot = self.ledger.snapshot(self.quality.core)  # between batches: rows and offset agree
            if snapshot is not None:
                size = await asyncio.to_thread(self.ledger.write_snapshot, snapshot)
                self._snapshot_of = position
                log.debug("wrote %s (%d bytes)", self.ledger.snapshot_path, size)
        except StorageErrors as exc:
            log.error("cannot write %s: %s; the next start reads the whole CSV", self.ledger.snapshot_path, exc)
        except Exception:  # a snapshot only saves start-up time: its bug must not stop the service or its shutdown
            log.exception("cannot write %s; the next start reads the whole CSV", self.ledger.snapshot_path)

    async def open_log_file(self, generation: int | None, offset: int) -> tuple[BinaryIO | None, int, int] | None:
        """The CSV file of ``generation`` (None: the current one) opened for GET /metrics/rows (None: not
        there, it was missing), its generation and the current one; None when that generation is not
        kept. At offset 0, a generation no longer kept starts at the next one kept. Under the ledger's
        lock: a rotation is not halfway done while the file is chosen."""
        async with self._ledger_lock:
            found = self.ledger.file_to_read(generation, offset)
            if found is None:
                return None
            try:
                f: BinaryIO | None = found[1].open("rb")
            except FileNotFoundError:
                f = None
            return f, found[0], self.ledger.generation

    async def stop(self) -> None:
        await self.link.close()  # the consumer finishes the batch in hand first
        if self._snapshots is not None:
            self._snapshots.cancel()
            await asyncio.gather(self._snapshots, return_exceptions=True)
            await self.write_snapshot()
        for task in (self._sweeper, self._file_watch, self._bounds):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._saving_dead_lettered is not None:
            await asyncio.wait([self._saving_dead_lettered], timeout=RETRY_S)
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

    app = service_app("metric_api", lifespan, service.problem, service.health_details, settings=settings)
    app.include_router(router)
    return app


async def get_service(request: Request) -> MetricService:
    return cast(MetricService, request.state.metric)  # put there by the lifespan's state


Service = Annotated[MetricService, Depends(get_service)]
router = APIRouter(prefix="/metrics", tags=["metrics"])


@router.get(SUMMARY_ROUTE.removeprefix(router.prefix), response_model=Summary)
async def summary(request: Request) -> Response:
    """count, mae, rmse; per window and per model version the twelve numbers docs/monitoring.md
    lists; the join, the labels (share, lag, waiting by age), latency, alert and baseline. Numbers
    are never NaN (null instead). The JSON is the ``Summary`` model's, kept while nothing in it changes."""
    # The service from the request, not as a dependency: FastAPI's solving of one cost a tenth of a
    # summary's CPU (the route is polled by plot_api and dashboards).
    return Response(summary_of(await get_service(request)), media_type="application/json")


def summary_of(service: MetricService) -> bytes:
    """The summary's JSON now."""
    ledger = service.ledger
    join = {
        "pending_y_true": ledger.pending("y_true"),
        "pending_y_pred": ledger.pending("y_pred"),
        "orphans": ledger.orphans,
        "late_joins": ledger.late_joins,
        "dead_lettered": service.dead_lettered,
        "expired": ledger.expired,
    }
    waiting = Waiting(predictions=ledger.waiting_halves("y_pred"), by_age=ledger.waiting)
    return service.quality.summary(join, str(ledger.csv.path), service.clock(), waiting)


@router.get(BY_TIME_ROUTE.removeprefix(router.prefix), response_model=ByTime)
async def by_time(service: Service) -> dict[str, Any]:
    """The predictions made in each TIME_BUCKET_S bucket (by the y_pred message's ts): how many reached the
    join, how many are labelled yet (their share), and the twelve numbers over the labelled ones, revised
    as late labels join. The TIME_BUCKETS_KEPT newest buckets, oldest first (docs/monitoring.md)."""
    return service.quality.core.by_time.report(service.clock())  # the statistics change on this loop only


@router.get("/recent")
async def recent(service: Service, limit: Annotated[int, Query(ge=1, le=RECENT_ROWS_SERVED)] = 10) -> list[dict[str, Any]]:
    return [
        {"id": row.id, "y_true": row.y_true, "y_pred": row.y_pred, "absolute_error": row.absolute_error}
        for row in service.quality.core.last(limit)
    ]


@router.get(
    ROWS_ROUTE.removeprefix(router.prefix),
    response_class=Response,
    responses={
        200: {
            "content": {"text/csv": {}},
            "description": "metric_log.csv (or a rotated generation of it) from `offset`: whole lines only",
        },
        REPLACED_STATUS: {
            "description": "`offset` is past the end of the file (it was replaced), or its generation is gone: read again from 0"
        },
    },
)
async def rows(
    service: Service,
    offset: Annotated[int, Query(ge=0, description="the byte to start from: 0, then each answer's X-Next-Offset")] = 0,
    max_bytes: Annotated[int, Query(ge=1024, le=ROWS_MAX_BYTES)] = ROWS_MAX_BYTES,
    generation: Annotated[
        int | None, Query(ge=0, description="the file of this generation (X-Log-Generation); none: the current file")
    ] = None,
) -> Response:
    """metric_log.csv itself, from byte ``offset`` (the header first when 0), whole lines only: how
    plot_api reads the rows of every shard over HTTP, a little more at each look.
    ``X-Next-Offset`` is where to go on; ``X-Log-Id`` changes when the file is replaced
    (read again from 0 then). With rotation (METRIC_LOG_MAX_BYTES), ``X-Log-Generation`` is the
    generation of the file read and ``X-Log-Current-Generation`` the current file's: a reader finishes
    its generation (an answer of an older generation bringing nothing), then reads the next from 0."""
    opened = await service.open_log_file(generation, offset)
    if opened is None:
        return JSONResponse(
            {"detail": f"generation {generation} of {service.ledger.csv.path.name} is not kept here; read again from 0"},
            status_code=REPLACED_STATUS,
        )
    f, served, current = opened
    if f is None:
        chunk = (
            None
            if offset > 0
            else RowsChunk(data=b"", next_offset=0, log_id="none", generation=served, current_generation=current)
        )
    else:
        chunk = await asyncio.to_thread(read_open_chunk, f, offset, max_bytes, served, current)
    if chunk is None:
        return JSONResponse(
            {"detail": f"offset {offset} is past the end of {service.ledger.csv.path}: it was replaced; read again from 0"},
            status_code=REPLACED_STATUS,
        )
    return Response(chunk.data, media_type="text/csv", headers=chunk.headers())
