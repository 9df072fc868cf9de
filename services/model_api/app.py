"""model_api: predicts for every features message and publishes the prediction to y_pred; takes the
predictions of a model served elsewhere (``POST /predictions``, the ``predictions`` queue), checks
their features against the schema, feeds drift with them and publishes them to y_pred too."""

import asyncio
import contextlib
import inspect
import logging
import math
import secrets
import signal
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict, cast

import sklearn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from services.common.amqp.consumer import BatchConsumer, Delivery, Rejection
from services.common.amqp.link import BrokerLink, Link
from services.common.amqp.publisher import Outgoing
from services.common.amqp.topology import FEATURES, PREDICTIONS, Y_PRED, half_queue, half_queues
from services.common.http.app import service_app
from services.common.http.bodies import StrictBody, schema_rows
from services.common.messages import (
    ID_RULE,
    SCHEMA_CONTEXT,
    CallerId,
    FeaturesBody,
    FeaturesMessage,
    ModelVersion,
    PredictionMessage,
    ReportedPrediction,
    SampleIdClock,
    Target,
    Timestamp,
)
from services.common.registration import EXTERNAL_VERSION
from services.common.settings import Settings, get_settings
from services.model_api.drift_watch import DriftWatch, refusal_kind
from services.model_api.modelstore import LoadedModel, ModelFileError, load_model

log = logging.getLogger(__name__)

SERVED = Counter(
    "predictions",
    "Predictions served (queue, http) or reported from elsewhere (reported_http, reported_queue)",
    ["path", "model_version"],
)
MODEL_RELOADS = Counter("model_reloads", "Model reloads (POST /model/reload, SIGHUP)", ["outcome"])
# The most rows one POST /predict may carry in "instances".
PREDICT_BATCH_MAX = 1000
# Predictions made elsewhere in one POST /predictions, and how many are published at a time (confirms pipelined within).
REPORTED_MAX = 10_000
PUBLISH_CHUNK = 1000
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
        # Each delivery is checked against the schema of the model in service when it arrives.
        context = self.validation_context
        self.consumer = BatchConsumer(self._predict_batch, invalid=self.drift.refused_from_queue)
        self.consumer.subscribe(settings.queue(FEATURES), FeaturesMessage, context)
        self.reports = BatchConsumer(self._reported_batch, invalid=self.drift.refused_from_queue)
        self.reports.subscribe(settings.queue(PREDICTIONS), ReportedPrediction, context)
        self.link = link or BrokerLink(
            settings, "model_api", publishes=half_queues(settings, Y_PRED), consumers=[self.consumer, self.reports]
        )

    def validation_context(self) -> dict[str, Any]:
        return {SCHEMA_CONTEXT: self.model.schema}

    @property
    def reported_version(self) -> str:
        """The model_version of a prediction from elsewhere that names none: a profile's own, else ``external``."""
        return self.model.version if self.model.predictor is None else EXTERNAL_VERSION

    def prediction(self, sample_id: str, value: float, ts: float | None, version: str) -> Outgoing:
        # Every part was validated where it came in (the id and ts with their message or request, the value
        # by prediction_problem or as a Target): built without validating it all again.
        message = PredictionMessage.model_construct(id=sample_id, body=value, ts=ts, model_version=version)
        return Outgoing(half_queue(self.settings, Y_PRED, sample_id), message.to_bytes(), sample_id)

    async def _predict_batch(self, batch: list[Delivery[FeaturesMessage]]) -> list[Rejection]:
        """One predict call for the batch, every prediction published (confirms pipelined).

        A row the model refuses (it raised on it) or predicts no sane number for (not finite,
        beyond TARGET_ABS_MAX) is refused alone, not with its batch. With no model here (a
        profile of a model served elsewhere) every features message is refused, saying so.
        """
        model = self.model  # one model for the whole batch, whatever a reload does meanwhile
        if model.predictor is None:
            return [(delivery, f"model_api cannot predict: {model.unservable}") for delivery in batch]
        rows = [delivery.message.body for delivery in batch]
        outcomes = await self.predict(model, rows)
        predictions, refused, predicted_rows, values = [], [], [], []
        for delivery, outcome in zip(batch, outcomes, strict=True):
            features = delivery.message
            if isinstance(outcome, str):
                refused.append((delivery, f"model {model.version} refused these features: {outcome}"))
            elif (problem := prediction_problem(outcome)) is not None:
                refused.append((delivery, f"model {model.version} predicted {outcome:g} for these features: {problem}"))
            else:
                predictions.append(self.prediction(features.id, outcome, features.ts, model.version))
                predicted_rows.append(features.body)
                values.append(outcome)
        await self.link.publisher.publish_many(predictions)
        self.count_served(model.version, "queue", len(predictions))
        # After the publish: a batch that fails is seen when it comes again. Only what was predicted.
        self.drift.observe(predicted_rows, values)
        if refused:
            self.drift.refuse("queue", "unpredictable", len(refused))
        return refused

    async def predict(self, model: LoadedModel, rows: list[Any]) -> list[float | str]:
        """Each row's prediction or the model's reason for refusing it. A model fed a DataFrame takes
        a millisecond or more a batch: it runs in a thread, so the event loop (acks, confirms, HTTP) goes on."""
        assert model.predictor is not None
        if model.schema.numeric_only and not model.predictor.by_name:
            return model.predictor.predict_each(rows)
        return await asyncio.to_thread(model.predictor.predict_each, rows)

    async def _reported_batch(self, batch: list[Delivery[ReportedPrediction]]) -> list[Rejection]:
        """Predictions made elsewhere, from the queue: published to y_pred, their features fed to drift."""
        await self.report([delivery.message for delivery in batch], "reported_queue")
        return []

    async def report(self, reported: Sequence[ReportedPrediction], path: str) -> None:
        """Publish predictions made elsewhere (features already checked) to y_pred; return once confirmed."""
        default = self.reported_version
        now = time.time()
        messages = [self.prediction(item.id, item.body, item.ts or now, item.model_version or default) for item in reported]
        for start in range(0, len(messages), PUBLISH_CHUNK):
            await self.link.publisher.publish_many(messages[start : start + PUBLISH_CHUNK])
        by_version = Tally(item.model_version or default for item in reported)
        for version, count in by_version.items():
            self.count_served(version, path, count)
        described = [(item.features, item.body) for item in reported if item.features is not None]
        self.drift.observe([features for features, _ in described], [value for _, value in described])

    async def monitor(self, ids: list[str], values: list[float], version: str, served_at: float) -> None:
        """Publish predictions served over HTTP to y_pred, as the queue path does; return once confirmed."""
        await self.link.publisher.publish_many(
            [self.prediction(sample_id, value, served_at, version) for sample_id, value in zip(ids, values, strict=True)]
        )

    def count_served(self, version: str, path: str, count: int) -> None:
        self.served.setdefault(version, Tally())[path] += count
        SERVED.labels(path=path, model_version=version).inc(count)

    @staticmethod
    def _log_loaded(model: LoadedModel) -> LoadedModel:
        log.info(
            "model %s (%s) loaded from %s in %.2f s%s",
            model.version,
            model.metadata.get("model_type")
            or ("served elsewhere" if model.predictor is None else type(model.predictor.model).__name__),
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

    app = service_app(
        "model_api",
        lifespan,
        service.link.problem,
        service.link.details,
        settings=settings,
        features_schema=lambda: service.model.schema,
    )
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
    your sample's ``id`` (or ``ids``, one per instance) when you will send its label later. A row is
    an object by feature name, or a list of the values in the schema's order (GET /model/schema)."""

    model_config = ConfigDict(json_schema_extra=_one_of_the_two_forms)

    # Neither is optional in type: the one not given stays unset (see model_fields_set), never null.
    features: FeaturesBody = Field(default_factory=list, description="one row: {name: value} or [values in schema order]")
    instances: Annotated[list[FeaturesBody], Field(min_length=1, max_length=PREDICT_BATCH_MAX)] = Field(
        default_factory=list, description=f"1 to {PREDICT_BATCH_MAX} rows, each as features is"
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
                    'give either "features": {...} (one row) or "instances": [{...}, ...] (a batch), '
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
            _no_repeated_ids(self.ids)
        return self


def _no_repeated_ids(ids: Sequence[str]) -> None:
    repeated = [sample_id for sample_id, count in Tally(ids).items() if count > 1]
    if repeated:
        raise ValueError(f"each item needs its own id; given more than once: {', '.join(repeated[:5])}")


class Unpredictable(RequestValidationError):
    """A 422 for rows the model refuses or predicts no sane number for (counted as such, not as a bad body)."""


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


class ReportedItem(StrictBody):
    """A prediction your own stack made: its id (send its label later under it), the value, and the
    features it was made from (for drift; optional), the model that made it and when."""

    id: CallerId = Field(description=ID_RULE)
    prediction: Target
    features: FeaturesBody | None = Field(None, description="{name: value} or [values in schema order]; feeds drift")
    model_version: ModelVersion | None = Field(
        None, description="by default the profile's (register --model-version), else 'external'"
    )
    ts: Timestamp | None = Field(None, description="when it was made (epoch seconds); by default when it is taken here")


class ReportedRequest(StrictBody):
    predictions: Annotated[list[ReportedItem], Field(min_length=1, max_length=REPORTED_MAX)]

    @model_validator(mode="after")
    def one_prediction_per_id(self) -> "ReportedRequest":
        _no_repeated_ids([item.id for item in self.predictions])
        return self


class ReportedAccepted(BaseModel):
    accepted: int = Field(description="predictions published to y_pred and confirmed by the broker")
    with_features: int = Field(description="how many of them came with features (those feed drift)")


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
        422: {"description": "a row that does not fit the schema (the answer names the feature), or that the model refuses"},
        503: {
            "description": "no model file is registered (a profile of a model served elsewhere), or MONITOR_HTTP_PREDICTIONS "
            "is on and the broker is not connected: nothing was served"
        },
    },
)
async def predict(request: PredictRequest, service: Service) -> PredictResponse | BatchPredictResponse:
    model = service.model
    if model.unservable is not None:
        raise HTTPException(503, detail=model.unservable)
    monitored = service.settings.MONITOR_HTTP_PREDICTIONS
    if monitored and (problem := service.link.problem()) is not None:
        raise HTTPException(503, detail=f"cannot monitor this prediction now, so it is not served: {problem}")
    one_row = "features" in request.model_fields_set
    bodies = [request.features] if one_row else request.instances
    rows = schema_rows(model.schema, bodies, lambda i: ("body", "features") if one_row else ("body", "instances", i))
    outcomes = await service.predict(model, rows)
    refused = [
        (i, outcome if isinstance(outcome, str) else f"predicts {outcome:g} for this row: {problem}")
        for i, outcome in enumerate(outcomes)
        if isinstance(outcome, str) or (problem := prediction_problem(outcome)) is not None
    ]
    if refused:
        service.drift.refuse("http", "unpredictable", len(refused))
        raise Unpredictable(
            [
                {
                    "type": "model_refused",
                    "loc": ("body", "features") if one_row else ("body", "instances", i),
                    "msg": f"model {model.version}: {why}",
                    "input": bodies[i],
                }
                for i, why in refused
            ]
        )
    values = [float(outcome) for outcome in outcomes]
    served_at = time.time()
    given: list[str | None] = [request.id] if one_row else [None] * len(rows)
    if request.ids is not None:
        given = [*request.ids]
    ids = [sample_id if sample_id is not None else service.ids.next()[0] for sample_id in given]
    if monitored:
        await service.monitor(ids, values, model.version, served_at)
    service.count_served(model.version, "http", len(rows))
    service.drift.observe(rows, values)
    if one_row:
        return PredictResponse(id=ids[0], prediction=values[0], model_version=model.version, monitored=monitored)
    return BatchPredictResponse(ids=ids, predictions=values, model_version=model.version, monitored=monitored)


@router.post(
    "/predictions",
    responses={
        422: {"description": "an item that does not fit (the answer names the item and the feature): nothing was taken"},
        503: {"description": "the broker is not connected: nothing was taken"},
    },
)
async def report_predictions(request: ReportedRequest, service: Service) -> ReportedAccepted:
    """Predictions a model served elsewhere made (your FastAPI app, a batch job, another model server):
    1 to 10,000 items, taken whole or refused whole. Each is published to y_pred, to be joined with its
    label (``POST :8001/labels``, whenever it is known); the features given feed drift as /predict's do.
    The answer comes once the broker has confirmed every one."""
    schema = service.model.schema
    described = [(i, item) for i, item in enumerate(request.predictions) if item.features is not None]
    rows = schema_rows(
        schema, [item.features for _, item in described], lambda k: ("body", "predictions", described[k][0], "features")
    )
    if (problem := service.link.problem()) is not None:
        raise HTTPException(503, detail=f"cannot publish now, nothing was taken: {problem}")
    checked: list[list[float | str | None] | None] = [None] * len(request.predictions)
    for (i, _), row in zip(described, rows, strict=True):
        checked[i] = row
    reported = [  # validated above, item by item: not again
        ReportedPrediction.model_construct(
            id=item.id, body=item.prediction, ts=item.ts, model_version=item.model_version, features=row, schema_id=None
        )
        for item, row in zip(request.predictions, checked, strict=True)
    ]
    await service.report(reported, "reported_http")
    return ReportedAccepted(accepted=len(reported), with_features=len(described))


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


@router.get("/model/schema")
async def model_schema(service: Service) -> dict[str, Any]:
    """The schema every features body is checked against: the features in order (the order of a list
    body), each numeric or categorical, with the categories the reference showed and the share missing."""
    model = service.model
    return {"model_version": model.version, "fingerprint": model.schema.fingerprint, **model.schema.to_json()}


@router.get("/model/info")
async def model_info(service: Service) -> dict[str, Any]:
    model = service.model
    return {
        **model.metadata,
        "served_here": model.predictor is not None,
        "unservable": model.unservable,
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
