"""model_api: predicts for every features message and publishes the prediction to y_pred."""

import asyncio
import contextlib
import inspect
import logging
import math
import secrets
import signal
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict, cast

import numpy as np
import sklearn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from services.common.amqp.consumer import BatchConsumer, Delivery, Rejection
from services.common.amqp.link import BrokerLink, Link
from services.common.amqp.publisher import Outgoing
from services.common.amqp.topology import FEATURES, Y_PRED, half_queue, half_queues
from services.common.http import StrictBody, service_app
from services.common.messages import (
    FEATURE_COUNT,
    ID_RULE,
    CallerId,
    Feature,
    FeaturesMessage,
    PredictionMessage,
    SampleIdClock,
    Target,
)
from services.common.settings import Settings, get_settings
from services.model_api.drift_watch import DriftWatch, refusal_kind
from services.model_api.modelstore import LoadedModel, ModelFileError, load_model

log = logging.getLogger(__name__)

PREDICTIONS = Counter("predictions", "Predictions served", ["path", "model_version"])
MODEL_RELOADS = Counter("model_reloads", "Model reloads (POST /model/reload, SIGHUP)", ["outcome"])
# The most rows one POST /predict may carry in "instances".
PREDICT_BATCH_MAX = 1000
# Digits after the microseconds of the ids /predict makes: drawn once per process, so that they
# never equal the features service's ids (which have none) and two replicas' ids differ too.
ID_SUFFIX_DIGITS = 6
_TARGET = TypeAdapter(Target)


def prediction_problem(value: float) -> str | None:
    """Why a model's output cannot be a prediction (not finite, beyond TARGET_ABS_MAX), or None."""
    if not math.isfinite(value):
        return "not a finite number"
    try:
        _TARGET.validate_python(value)
    except ValidationError as exc:
        return exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
    return None


class ModelService:
    """Consumes ``features`` in batches, predicts, publishes ``y_pred`` (confirmed); the consumer then acks."""

    def __init__(self, settings: Settings, link: Link | None = None) -> None:
        self.settings = settings
        # The model in service. Swapped whole by reload(); each batch reads it once.
        self.model = self._log_loaded(load_model(settings.MODEL_PATH, allow_unverified=settings.MODEL_ALLOW_UNVERIFIED))
        self.served: dict[str, Tally[str]] = {}  # model_version -> {"queue": n, "http": n}
        self.ids = SampleIdClock(suffix=f"{secrets.randbelow(10**ID_SUFFIX_DIGITS):0{ID_SUFFIX_DIGITS}d}")
        self._reload_lock = asyncio.Lock()
        self._sighup_reloads: set[asyncio.Task[None]] = set()
        self.drift = DriftWatch(settings, self.model)
        self.consumer = BatchConsumer(self._predict_batch, invalid=self.drift.refused_from_queue)
        self.consumer.subscribe(settings.queue(FEATURES), FeaturesMessage)
        self.link = link or BrokerLink(settings, "model_api", publishes=half_queues(settings, Y_PRED), consumers=[self.consumer])

    async def _predict_batch(self, batch: list[Delivery[FeaturesMessage]]) -> list[Rejection]:
        """One predict call for the batch, every prediction published (confirms pipelined).

        A row the model predicts no sane number for (not finite, beyond TARGET_ABS_MAX) is
        refused alone, not with its batch.
        """
        model = self.model  # one model for the whole batch, whatever a reload does meanwhile
        rows = np.asarray([delivery.message.body for delivery in batch], dtype=float)  # once, for the model and drift
        values = model.predictor.predict(rows)
        predictions, refused = [], []
        for delivery, value in zip(batch, values, strict=True):
            features = delivery.message
            if (problem := prediction_problem(value)) is None:
                message = PredictionMessage(id=features.id, body=value, ts=features.ts, model_version=model.version)
                predictions.append(Outgoing(half_queue(self.settings, Y_PRED, features.id), message.to_bytes(), features.id))
            else:
                refused.append((delivery, f"model {model.version} predicted {value:g} for these features: {problem}"))
        await self.link.publisher.publish_many(predictions)
        self.count_served(model.version, "queue", len(predictions))
        # After the publish: a batch that fails is seen when it comes again. Only what was predicted.
        self.drift.observe(rows, values)
        if refused:
            self.drift.refuse("queue", "unpredictable", len(refused))
        return refused

    async def monitor(self, ids: list[str], values: list[float], version: str, served_at: float) -> None:
        """Publish predictions served over HTTP to y_pred, as the queue path does; return once confirmed."""
        await self.link.publisher.publish_many(
            [
                Outgoing(
                    half_queue(self.settings, Y_PRED, sample_id),
                    PredictionMessage(id=sample_id, body=value, ts=served_at, model_version=version).to_bytes(),
                    sample_id,
                )
                for sample_id, value in zip(ids, values, strict=True)
            ]
        )

    def count_served(self, version: str, path: str, count: int) -> None:
        self.served.setdefault(version, Tally())[path] += count
        PREDICTIONS.labels(path=path, model_version=version).inc(count)

    @staticmethod
    def _log_loaded(model: LoadedModel) -> LoadedModel:
        log.info(
            "model %s (%s) loaded from %s in %.2f s%s",
            model.version,
            model.metadata.get("model_type", type(model.predictor.model).__name__),
            model.path,
            model.load_seconds,
            "" if model.verified else " UNVERIFIED",
        )
        for warning in model.warnings:
            log.warning("%s", warning)
        return model

    async def reload(self) -> tuple[LoadedModel, LoadedModel]:
        """Load MODEL_PATH again, off the event loop, and put it in service: (old, new).

        On ModelFileError the old model stays in service. The swap is one assignment
        between batches, so a batch is predicted by exactly one model.
        """
        async with self._reload_lock:
            path = self.settings.MODEL_PATH
            try:
                new = await asyncio.to_thread(load_model, path, allow_unverified=self.settings.MODEL_ALLOW_UNVERIFIED)
            except ModelFileError as exc:
                MODEL_RELOADS.labels(outcome="refused").inc()
                log.error("model reload refused, model %s stays in service: %s", self.model.version, exc)
                raise
            monitor = await asyncio.to_thread(self.drift.monitor_for, new)
            old, self.model = self.model, self._log_loaded(new)
            self.drift.use(new, monitor)
            MODEL_RELOADS.labels(outcome="loaded").inc()
            log.info("model reloaded: %s -> %s", old.version, new.version)
            return old, new

    def _on_sighup(self) -> None:
        async def reload_logged() -> None:
            with contextlib.suppress(ModelFileError):  # reload() logged why; the old model serves on
                await self.reload()

        task = asyncio.create_task(reload_logged(), name="model-reload-sighup")
        self._sighup_reloads.add(task)
        task.add_done_callback(self._sighup_reloads.discard)

    def listen_for_sighup(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (RuntimeError, ValueError) as exc:  # not the main thread (an in-process test client)
            log.info("SIGHUP will not reload the model here (%s); POST /model/reload does", exc)

    def start(self) -> None:
        self.link.start()
        self.drift.start()

    async def stop(self) -> None:
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self.link.close()
        await self.drift.stop()


class State(TypedDict):
    model: ModelService


def create_app(settings: Settings | None = None, link: Link | None = None) -> FastAPI:
    """The model_api app; ``link`` replaces the broker connection (in-process tests)."""
    settings = settings or get_settings()
    service = ModelService(settings, link)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        service.start()
        service.listen_for_sighup()
        try:
            yield {"model": service}
        finally:
            await service.stop()

    app = service_app("model_api", lifespan, service.link.problem, service.link.details, settings=settings)
    app.include_router(router)
    count_refused_predict_bodies(app, service)
    return app


def count_refused_predict_bodies(app: FastAPI, service: ModelService) -> None:
    """Count each /predict body refused with a 422 by reason (data quality), then answer as usual."""
    answer = app.exception_handlers[RequestValidationError]

    async def counted(request: Request, exc: Exception) -> Response:
        if request.url.path == "/predict" and isinstance(exc, RequestValidationError) and not isinstance(exc, Unpredictable):
            service.drift.refuse("http", refusal_kind(exc.errors()))
        response = answer(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(RequestValidationError, counted)


async def get_service(request: Request) -> ModelService:
    return cast(ModelService, request.state.model)  # put there by the lifespan's state


Service = Annotated[ModelService, Depends(get_service)]
router = APIRouter(tags=["model"])


Row = Annotated[list[Feature], Field(min_length=FEATURE_COUNT, max_length=FEATURE_COUNT)]


def _one_of_the_two_forms(schema: dict[str, Any]) -> None:
    """The schema says what the validator enforces: exactly one of the two fields, no nulls; ``id``
    only beside ``features``, ``ids`` (each once) only beside ``instances``. That ``ids`` has as many
    items as ``instances`` is said in words: JSON Schema cannot tie two lengths together."""
    schema["oneOf"] = [
        {"required": ["features"], "not": {"anyOf": [{"required": ["instances"]}, {"required": ["ids"]}]}},
        {"required": ["instances"], "not": {"anyOf": [{"required": ["features"]}, {"required": ["id"]}]}},
    ]
    for field in schema["properties"].values():
        field.pop("default", None)
    for branch in schema["properties"]["ids"]["anyOf"]:
        if branch.get("type") == "array":
            branch.update(uniqueItems=True, minItems=1, maxItems=PREDICT_BATCH_MAX)


class PredictRequest(StrictBody):
    """One row as ``features``, or a batch of rows as ``instances`` — exactly one of the two; with
    your sample's ``id`` (or ``ids``, one per instance) when you will send its label later."""

    model_config = ConfigDict(json_schema_extra=_one_of_the_two_forms)

    # Neither is optional in type: the one not given stays unset (see model_fields_set), never null.
    features: Row = Field(default_factory=list, description=f"one row of {FEATURE_COUNT} numbers")
    instances: Annotated[list[Row], Field(min_length=1, max_length=PREDICT_BATCH_MAX)] = Field(
        default_factory=list, description=f"1 to {PREDICT_BATCH_MAX} rows of {FEATURE_COUNT} numbers each"
    )
    id: CallerId | None = Field(None, description=f"with features: the sample's id (made here when absent). {ID_RULE}")
    ids: list[CallerId] | None = Field(
        None, description="with instances: one id per row, in order, as many as rows (made here when absent)"
    )

    @model_validator(mode="before")
    @classmethod
    def exactly_one_form(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [form for form in ("features", "instances") if form in data]
            if len(given) != 1:
                raise ValueError(
                    'give either "features": [10 numbers] (one row) or "instances": [[10 numbers], ...] (a batch), '
                    + ("not both" if given else "neither was given")
                )
        return data

    @model_validator(mode="after")
    def ids_match_the_rows(self) -> "PredictRequest":
        one_row = "features" in self.model_fields_set
        if one_row and self.ids is not None:
            raise ValueError('"ids" goes with "instances"; one row takes "id"')
        if not one_row and self.id is not None:
            raise ValueError('"id" goes with "features"; a batch of "instances" takes "ids", one per row')
        if self.ids is not None:
            if len(self.ids) != len(self.instances):
                raise ValueError(f'"ids" has {len(self.ids)} ids for {len(self.instances)} instances: give one per row')
            repeated = sorted({sample_id for sample_id in self.ids if self.ids.count(sample_id) > 1})
            if repeated:
                raise ValueError(f"each row needs its own id; given more than once: {', '.join(repeated[:5])}")
        return self


class Unpredictable(RequestValidationError):
    """A 422 for rows the model predicts no finite number for (counted as such, not as a bad body)."""


class PredictResponse(BaseModel):
    id: str = Field(description="the sample's id: yours, or the one made for it; send its label with it")
    prediction: float
    model_version: str
    monitored: bool = Field(description="published to y_pred (confirmed) for the monitor to join with its label")


class BatchPredictResponse(BaseModel):
    ids: list[str]
    predictions: list[float]
    model_version: str
    monitored: bool


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str
    changed: bool
    warnings: list[str]


class ReloadRefused(BaseModel):
    detail: str
    model_version: str = Field(description="the model still in service")


@router.post(
    "/predict",
    responses={
        400: {"description": "the body is not UTF-8 JSON"},
        503: {"description": "MONITOR_HTTP_PREDICTIONS is on and the broker is not connected: nothing was served"},
    },
)
async def predict(request: PredictRequest, service: Service) -> PredictResponse | BatchPredictResponse:
    monitored = service.settings.MONITOR_HTTP_PREDICTIONS
    if monitored and (problem := service.link.problem()) is not None:
        raise HTTPException(503, detail=f"cannot monitor this prediction now, so it is not served: {problem}")
    model = service.model
    one_row = "features" in request.model_fields_set
    rows = [request.features] if one_row else request.instances
    matrix = np.asarray(rows, dtype=float)  # once, for the model and drift
    values = model.predictor.predict(matrix)
    unpredictable = [(i, problem) for i, value in enumerate(values) if (problem := prediction_problem(value)) is not None]
    if unpredictable:
        service.drift.refuse("http", "unpredictable", len(unpredictable))
        raise Unpredictable(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "features") if one_row else ("body", "instances", i),
                    "msg": f"model {model.version} predicts {values[i]:g} for this row: {problem}",
                    "input": rows[i],
                }
                for i, problem in unpredictable
            ]
        )
    served_at = time.time()
    given: list[str | None] = [request.id] if one_row else [None] * len(rows)
    if request.ids is not None:
        given = [*request.ids]
    ids = [sample_id if sample_id is not None else service.ids.next()[0] for sample_id in given]
    if monitored:
        await service.monitor(ids, values, model.version, served_at)
    service.count_served(model.version, "http", len(rows))
    service.drift.observe(matrix, values)
    if one_row:
        return PredictResponse(id=ids[0], prediction=values[0], model_version=model.version, monitored=monitored)
    return BatchPredictResponse(ids=ids, predictions=values, model_version=model.version, monitored=monitored)


@router.post(
    "/model/reload",
    response_model=ReloadResponse,
    responses={409: {"model": ReloadRefused, "description": "the file was refused; the old model still serves"}},
)
async def reload_model(service: Service) -> ReloadResponse | JSONResponse:
    try:
        old, new = await service.reload()
    except ModelFileError as exc:
        return JSONResponse({"detail": str(exc), "model_version": service.model.version}, status_code=409)
    return ReloadResponse(
        model_version=new.version, previous_version=old.version, changed=new.version != old.version, warnings=list(new.warnings)
    )


@router.get("/model/info")
async def model_info(service: Service) -> dict[str, Any]:
    model = service.model
    return {
        **model.metadata,
        "model_version": model.version,
        "model_path": str(model.path),
        "verified": model.verified,
        "sklearn_version_running": sklearn.__version__,
        "warnings": list(model.warnings),
        "loaded_at": model.loaded_at,
        "load_seconds": model.load_seconds,
        "predictions_served": sum(service.served.get(model.version, Tally()).values()),
        "predictions_by_version": {version: dict(paths) for version, paths in service.served.items()},
        "dead_lettered": service.consumer.dead_lettered,
    }


@router.get("/drift")
async def drift(service: Service) -> dict[str, Any]:
    """The last ``DRIFT_WINDOW_SIZE`` samples predicted for (of the last ``DRIFT_WINDOW_S`` seconds),
    per feature and for the prediction, against the model's reference: whether each drifted, its
    statistics and bins, and the data quality. docs/monitoring.md says how to read it."""
    return service.drift.report(time.time())
