"""metric_api: joins y_true and y_pred by id and appends one CSV row per id."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from prometheus_client import Counter, Gauge

from services.common.broker import Y_PRED, Y_TRUE, BrokerLink, ConfirmedPublisher, QueueConsumer, settle
from services.common.files import METRIC_LOG
from services.common.http import service_app
from services.common.messages import LabelMessage, PredictionMessage
from services.common.settings import Settings, get_settings
from services.metric_api.csvlog import MetricLog, MetricLogError
from services.metric_api.join import AlreadyWritten, Held, Joined, LabelPredictionJoin, Outcome
from services.metric_api.stats import RECENT_ROWS, RunningErrorStats

log = logging.getLogger(__name__)

ROWS_WRITTEN = Counter("metric_rows_written", "Rows appended to metric_log.csv")
DUPLICATE_HALVES = Counter("metric_duplicate_halves", "Halves whose id already has its row (redeliveries)")
PENDING = Gauge("metric_pending_halves", "Halves waiting for their partner", ["kind"])
LOG_RETRY_S = 2.0

Delivery = AbstractIncomingMessage


class MetricService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.csv = MetricLog(settings.LOGS_DIR / METRIC_LOG)
        self.join: LabelPredictionJoin[Delivery] = LabelPredictionJoin()
        self.stats = RunningErrorStats()
        self.log_problem: str | None = f"{self.csv.path} not opened yet"
        self.link = BrokerLink(settings, "metric_api", self._on_connect)
        self.consumers: list[QueueConsumer[Any]] = []
        self._recovering: asyncio.Task[None] | None = None
        PENDING.labels(kind="y_true").set_function(lambda: self.join.pending_labels)
        PENDING.labels(kind="y_pred").set_function(lambda: self.join.pending_predictions)

    def problem(self) -> str | None:
        return self.log_problem or self.link.problem()

    def _open_log(self) -> None:
        join: LabelPredictionJoin[Delivery] = LabelPredictionJoin()
        stats = RunningErrorStats()
        for row in self.csv.open():
            join.written(row.id)
            stats.add(row)
        self.join, self.stats, self.log_problem = join, stats, None
        log.info("%s holds %d rows", self.csv.path, stats.count)

    async def _open_log_until_ok(self) -> None:
        while True:
            try:
                self._open_log()
                return
            except (OSError, MetricLogError) as exc:
                self.csv.close()
                problem = f"cannot use {self.csv.path}: {exc}"
                if problem != self.log_problem:
                    log.error("%s; retrying every %ss", problem, LOG_RETRY_S)
                self.log_problem = problem
            await asyncio.sleep(LOG_RETRY_S)

    async def start(self) -> None:
        await self._open_log_until_ok()
        self.link.start()

    async def _on_connect(self, _connection: AbstractRobustConnection) -> None:
        dead_letters = ConfirmedPublisher(await self.link.channel(), self.settings.PUBLISH_TIMEOUT_S)
        self.consumers = [
            QueueConsumer(self.settings.queue(Y_TRUE), LabelMessage, self._on_label, dead_letters),
            QueueConsumer(self.settings.queue(Y_PRED), PredictionMessage, self._on_prediction, dead_letters),
        ]
        # One channel each, so a queue's unmatched halves never use up the other's prefetch.
        for consumer in self.consumers:
            await consumer.start(await self.link.channel(prefetch=self.settings.METRIC_PREFETCH))

    async def _on_label(self, label: LabelMessage, delivery: Delivery) -> None:
        await self._settle(self.join.add_label(label.id, label.body, delivery), delivery)

    async def _on_prediction(self, prediction: PredictionMessage, delivery: Delivery) -> None:
        await self._settle(self.join.add_prediction(prediction.id, prediction.body, delivery), delivery)

    async def _settle(self, outcome: Outcome[Delivery], delivery: Delivery) -> None:
        match outcome:
            case AlreadyWritten():
                DUPLICATE_HALVES.inc()
                await settle(delivery)
            case Held(replaced=replaced) if replaced is not None:
                await settle(replaced)  # a second copy of a held half: keep one
            case Joined(row=row, tokens=tokens):
                try:
                    self.csv.append([row])
                except (OSError, MetricLogError) as exc:
                    await self._suspend(f"cannot append to {self.csv.path}: {exc}", tokens)
                    return
                self.join.written(row.id)
                self.stats.add(row)
                ROWS_WRITTEN.inc()
                for token in tokens:
                    await settle(token)

    async def _suspend(self, problem: str, tokens: tuple[Delivery, ...]) -> None:
        """The CSV cannot be written: hand every held message back and stop until it can."""
        if self._recovering is not None:
            for token in tokens:
                await settle(token, requeue=True)
            return
        log.error("%s; pausing consumption until the file can be written again", problem)
        self.log_problem = problem
        for consumer in self.consumers:
            await consumer.pause()
        for token in (*tokens, *self.join.release_all()):
            await settle(token, requeue=True)
        self._recovering = asyncio.create_task(self._recover())

    async def _recover(self) -> None:
        await self._open_log_until_ok()
        for consumer in self.consumers:
            await consumer.resume()
        self._recovering = None
        log.info("%s writable again; consuming", self.csv.path)

    async def stop(self) -> None:
        if self._recovering is not None:
            self._recovering.cancel()
        for consumer in self.consumers:
            await consumer.stop()
        await self.link.close()
        self.csv.close()


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


def get_service(request: Request) -> MetricService:
    return request.state.metric


Service = Annotated[MetricService, Depends(get_service)]
router = APIRouter(prefix="/metrics", tags=["metrics"])


@router.get("/summary")
def summary(service: Service) -> dict[str, Any]:
    stats = service.stats
    return {
        "count": stats.count,
        "mae": stats.mae,
        "rmse": stats.rmse,
        "last_id": stats.last_id,
        "pending_y_true": service.join.pending_labels,
        "pending_y_pred": service.join.pending_predictions,
        "csv": str(service.csv.path),
    }


@router.get("/recent")
def recent(service: Service, limit: Annotated[int, Query(ge=1, le=RECENT_ROWS)] = 10) -> list[dict[str, Any]]:
    return [vars(row) for row in service.stats.last(limit)]
