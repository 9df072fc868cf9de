"""model_api: predicts for every features message and publishes the prediction to y_pred."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from fastapi import APIRouter, Depends, FastAPI, Request
from prometheus_client import Counter
from pydantic import BaseModel, Field

from services.common.batching import next_batch, wait_until_empty
from services.common.broker import FEATURES, Y_PRED, BrokerLink, ConfirmedPublisher, Outgoing, QueueConsumer, declare_queue
from services.common.http import service_app
from services.common.messages import FEATURE_COUNT, FeaturesMessage, Number, PredictionMessage
from services.common.settings import Settings, get_settings
from services.model_api.modelstore import load_model
from services.model_api.predictor import Predictor

log = logging.getLogger(__name__)

PREDICTIONS = Counter("predictions", "Predictions made", ["path"])


class ModelService:
    """Consumes ``features``, predicts, publishes ``y_pred`` (confirmed), then acks."""

    def __init__(self, settings: Settings) -> None:
        model, self.metadata = load_model(settings.MODEL_PATH)
        self.predictor = Predictor(model, version=self.metadata["sha256"][:12])
        self.settings = settings
        self.link = BrokerLink(settings, "model_api", self._on_connect)
        self._predictions_queue = settings.queue(Y_PRED)
        self._publisher: ConfirmedPublisher | None = None
        self.consumer: QueueConsumer[FeaturesMessage] | None = None
        self._inbox: asyncio.Queue[tuple[FeaturesMessage, AbstractIncomingMessage]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def _on_connect(self, _connection: AbstractRobustConnection) -> None:
        publish_channel = await self.link.channel()
        await declare_queue(publish_channel, self._predictions_queue)
        self._publisher = ConfirmedPublisher(publish_channel, self.settings.PUBLISH_TIMEOUT_S)
        self.consumer = QueueConsumer(self.settings.queue(FEATURES), FeaturesMessage, self._on_features, self._publisher)
        await self.consumer.start(await self.link.channel(prefetch=self.settings.PREFETCH))

    async def _on_features(self, features: FeaturesMessage, delivery: AbstractIncomingMessage) -> None:
        await self._inbox.put((features, delivery))

    async def _work(self) -> None:
        while True:
            batch = await next_batch(self._inbox)
            try:
                await self._predict_and_publish(batch)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive a bad batch
                log.exception("predicting a batch of %d failed", len(batch))
                assert self.consumer is not None
                for _, delivery in batch:
                    if delivery.redelivered:
                        await self.consumer.dead_letter(delivery, f"prediction failed twice: {type(exc).__name__}: {exc}")
                    else:
                        await self.consumer.settle([delivery], requeue=True)

    async def _predict_and_publish(self, batch: list[tuple[FeaturesMessage, AbstractIncomingMessage]]) -> None:
        """One predict call for the batch; publish every prediction (confirms pipelined); then ack."""
        assert self._publisher is not None
        values = self.predictor.predict([features.body for features, _ in batch])
        PREDICTIONS.labels(path="queue").inc(len(batch))
        version = self.predictor.version
        await self._publisher.publish_many(
            [
                Outgoing(
                    self._predictions_queue,
                    PredictionMessage(id=features.id, body=value, ts=features.ts, model_version=version).to_bytes(),
                    features.id,
                )
                for (features, _), value in zip(batch, values, strict=True)
            ]
        )
        assert self.consumer is not None
        await self.consumer.settle([delivery for _, delivery in batch])

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="model-batches")
        self.link.start()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        await wait_until_empty(self._inbox)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        await self.link.close()


class State(TypedDict):
    model: ModelService


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    service = ModelService(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        service.start()
        try:
            yield {"model": service}
        finally:
            await service.stop()

    app = service_app("model_api", lifespan, service.link.problem)
    app.include_router(router)
    return app


async def get_service(request: Request) -> ModelService:
    return request.state.model


Service = Annotated[ModelService, Depends(get_service)]
router = APIRouter(tags=["model"])


class PredictRequest(BaseModel):
    features: Annotated[list[Number], Field(min_length=FEATURE_COUNT, max_length=FEATURE_COUNT)]


class PredictResponse(BaseModel):
    prediction: float
    model_version: str


@router.post("/predict")
async def predict(request: PredictRequest, service: Service) -> PredictResponse:
    [value] = service.predictor.predict([request.features])
    PREDICTIONS.labels(path="http").inc()
    return PredictResponse(prediction=value, model_version=service.predictor.version)


@router.get("/model/info")
async def model_info(service: Service) -> dict[str, Any]:
    return {
        "model_version": service.predictor.version,
        "model_path": str(service.settings.MODEL_PATH),
        **service.metadata,
        "dead_lettered": service.consumer.dead_lettered if service.consumer else 0,
    }
