"""model_api's work: predicting for every features message and publishing the prediction to y_pred;
taking the predictions of a model served elsewhere (``POST /predictions``, the ``predictions``
queue), their features checked and fed to drift; the model in service, and reloading it."""

import asyncio
import contextlib
import logging
import math
import secrets
import signal
import time
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError

from services.common.amqp.consumer import BatchConsumer, Delivery, Rejection
from services.common.amqp.link import BrokerLink, Link
from services.common.amqp.publisher import Outgoing
from services.common.amqp.topology import FEATURES, PREDICTIONS, Y_PRED, half_queue, half_queues
from services.common.group_commit import GroupCommit, Pending
from services.common.messages import (
    SCHEMA_CONTEXT,
    FeaturesMessage,
    PredictionMessage,
    ReportedPrediction,
    SampleIdClock,
    Target,
)
from services.common.registration import EXTERNAL_VERSION
from services.common.settings import Settings, get_settings
from services.common.tags import numeric_segment_keys, segment_feature_positions, segment_tags
from services.model_api.drift_watch import DriftWatch
from services.model_api.modelstore import LoadedModel, ModelFileError, load_model

log = logging.getLogger(__name__)


SERVED = Counter(
    "predictions",
    "Predictions served (queue, http) or reported from elsewhere (reported_http, reported_queue)",
    ["path", "model_version"],
)
ESTIMATE_FAILURES = Counter("estimate_failures", "Predictions left without an estimated error because the loss model failed")
PREDICT_GROUPS = Counter(
    "http_predict_groups",
    "Groups of concurrent POST /predict requests predicted and published together, and the requests in them",
    ["what"],
)
MODEL_RELOADS = Counter("model_reloads", "Model reloads (POST /model/reload, SIGHUP)", ["outcome"])
# The most rows one POST /predict may carry in "instances".
PREDICT_BATCH_MAX = 1000
# The most rows of concurrent POST /predict requests predicted and published together (a larger
# request goes alone).
PREDICT_GROUP_MAX = 1000
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
    if abs(value) <= get_settings().TARGET_ABS_MAX:
        return None  # what Target takes (the same bound), without a validation per prediction
    try:
        _TARGET.validate_python(value)
    except ValidationError as exc:
        return exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
    return None


@dataclass(frozen=True, slots=True, eq=False)
class PredictJob:
    """One POST /predict request: its rows (checked against ``model``'s schema), the ids it gave
    (None where one is to be made) and its tags."""

    model: LoadedModel
    rows: list[list[Any]]
    ids: Sequence[str | None]
    tags: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Served:
    """A request's predictions, served (and, when monitored, confirmed by the broker)."""

    ids: list[str]
    values: list[float]


@dataclass(frozen=True, slots=True)
class RefusedRows:
    """A request with rows the model refused or predicted no sane number for: (row, why) each;
    none of its rows is served."""

    rows: list[tuple[int, str]]


Outcome = Served | RefusedRows


class ModelService:
    """Consumes ``features`` in batches, predicts, publishes ``y_pred`` (confirmed); the consumer then acks."""

    def __init__(self, settings: Settings, link: Link | None = None) -> None:
        self.settings = settings
        # The model in service. Swapped whole by reload(); each batch reads it once.
        self.model = self._log_loaded(load_model(settings.MODEL_PATH, allow_unverified=settings.MODEL_ALLOW_UNVERIFIED))
        self._warn_of_numeric_segment_keys(self.model)
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
        # Concurrent POST /predict requests: one predict call and one publish round for all of them.
        self.http_group: GroupCommit[PredictJob, Outcome] = GroupCommit(
            self._serve_group, PREDICT_GROUP_MAX, lambda job: len(job.rows)
        )

    def validation_context(self) -> dict[str, Any]:
        return {SCHEMA_CONTEXT: self.model.schema}

    @property
    def reported_version(self) -> str:
        """The model_version of a prediction from elsewhere that names none: a profile's own, else ``external``."""
        return self.model.version if self.model.predictor is None else EXTERNAL_VERSION

    def segment_positions(self, model: LoadedModel) -> dict[str, int]:
        """The categorical features of ``model``'s schema named in SEGMENT_KEYS, by position in a row."""
        schema = model.schema
        return segment_feature_positions(self.settings.segment_keys, schema.names, schema.categorical)

    def prediction(
        self,
        sample_id: str,
        value: float,
        ts: float | None,
        version: str,
        tags: dict[str, str] | None = None,
        estimate: float | None = None,
    ) -> Outgoing:
        # Every part was validated where it came in (the id and ts with their message or request, the value
        # by prediction_problem or as a Target, the tags with their message, the estimate made by the loss
        # model): built without validating it all again.
        message = PredictionMessage.model_construct(
            id=sample_id, body=value, ts=ts, model_version=version, tags=tags, estimated_error=estimate
        )
        return Outgoing(half_queue(self.settings, Y_PRED, sample_id), message.to_bytes(), sample_id)

    def estimates(self, model: LoadedModel, rows: Sequence[Any], values: Sequence[float]) -> list[float | None]:
        """Each prediction's estimated absolute error, in one call of the loss model; None for every one when
        the model has none (or it fails: the predictions go on without, and the log says why)."""
        if isinstance(model.loss, str) or not rows:
            return [None] * len(rows)
        try:
            estimated: list[float | None] = list(model.loss.estimate(rows, values))
        except Exception:  # a loss model that fails must not stop the predictions it would describe
            ESTIMATE_FAILURES.inc(len(rows))
            log.exception("the loss model of %s failed on %d rows: they go without an estimated error", model.version, len(rows))
            return [None] * len(rows)
        return estimated

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
        positions = self.segment_positions(model)
        outcomes = await self.predict(model, rows)
        refused, predicted, predicted_rows, values = [], [], [], []
        for delivery, outcome in zip(batch, outcomes, strict=True):
            features = delivery.message
            if isinstance(outcome, str):
                refused.append((delivery, f"model {model.version} refused these features: {outcome}"))
            elif (problem := prediction_problem(outcome)) is not None:
                refused.append((delivery, f"model {model.version} predicted {outcome:g} for these features: {problem}"))
            else:
                predicted.append(features)
                predicted_rows.append(features.body)
                values.append(outcome)
        estimates = self.estimates(model, predicted_rows, values)
        predictions = [
            self.prediction(
                features.id, value, features.ts, model.version, segment_tags(features.tags, features.body, positions), estimate
            )
            for features, value, estimate in zip(predicted, values, estimates, strict=True)
        ]
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
        # The profile's loss model estimates the predictions of the model it profiles: those with features
        # and no other version (a model served here has no loss model of another's predictions).
        model = self.model
        mine = [
            i
            for i, item in enumerate(reported)
            if item.features is not None and model.predictor is None and (item.model_version or default) == model.version
        ]
        estimates: list[float | None] = [None] * len(reported)
        for i, estimate in zip(
            mine, self.estimates(model, [reported[i].features for i in mine], [reported[i].body for i in mine]), strict=True
        ):
            estimates[i] = estimate
        positions = self.segment_positions(model)
        messages = [
            self.prediction(
                item.id,
                item.body,
                item.ts or now,
                item.model_version or default,
                segment_tags(item.tags, item.features, positions),
                estimate,
            )
            for item, estimate in zip(reported, estimates, strict=True)
        ]
        for start in range(0, len(messages), PUBLISH_CHUNK):
            await self.link.publisher.publish_many(messages[start : start + PUBLISH_CHUNK])
        by_version = Tally(item.model_version or default for item in reported)
        for version, count in by_version.items():
            self.count_served(version, path, count)
        described = [(item.features, item.body) for item in reported if item.features is not None]
        self.drift.observe([features for features, _ in described], [value for _, value in described])

    async def serve(self, job: PredictJob) -> Outcome:
        """A POST /predict request's predictions, served together with the requests that came in the
        same event-loop turn (``_serve_group``); when monitored, returned once the broker confirmed them."""
        return await self.http_group.submit(job)

    async def _serve_group(self, group: list[Pending[PredictJob, Outcome]]) -> None:
        PREDICT_GROUPS.labels(what="groups").inc()
        PREDICT_GROUPS.labels(what="requests").inc(len(group))
        by_model: dict[int, list[Pending[PredictJob, Outcome]]] = {}
        for pending in group:  # one model, but for the requests checked just before a reload
            by_model.setdefault(id(pending.item.model), []).append(pending)
        await asyncio.gather(*(self._serve_with(same[0].item.model, same) for same in by_model.values()))

    async def _serve_with(self, model: LoadedModel, group: list[Pending[PredictJob, Outcome]]) -> None:
        """Predict every row of ``group`` in one call; a request with a row refused gets its RefusedRows
        and nothing of it is served; the others' predictions are published to y_pred together (when
        MONITOR_HTTP_PREDICTIONS), each request answered once its own are confirmed."""
        outcomes = await self.predict(model, [row for pending in group for row in pending.item.rows])
        served: list[tuple[Pending[PredictJob, Outcome], list[float]]] = []
        at = 0
        for pending in group:
            mine = outcomes[at : at + len(pending.item.rows)]
            at += len(pending.item.rows)
            refused = [
                (i, outcome if isinstance(outcome, str) else f"predicts {outcome:g} for this row: {problem}")
                for i, outcome in enumerate(mine)
                if isinstance(outcome, str) or (problem := prediction_problem(outcome)) is not None
            ]
            if refused:
                pending.settle(RefusedRows(refused))
            else:
                served.append((pending, [float(outcome) for outcome in mine]))
        answers = [
            (pending, Served([given if given is not None else self.ids.next()[0] for given in pending.item.ids], values))
            for pending, values in served
            if pending.waiting  # its client is gone: not served, not published
        ]
        if not self.settings.MONITOR_HTTP_PREDICTIONS:
            self._answer(model, answers)
            return
        rows = [row for pending, _ in answers for row in pending.item.rows]
        estimates = iter(self.estimates(model, rows, [value for _, answer in answers for value in answer.values]))
        positions = self.segment_positions(model)
        served_at = time.time()
        messages: list[Outgoing] = []
        owner: dict[int, int] = {}  # id(message) -> its request's index in answers
        unconfirmed = [len(answer.ids) for _, answer in answers]
        for k, (pending, answer) in enumerate(answers):
            for sample_id, value, row in zip(answer.ids, answer.values, pending.item.rows, strict=True):
                tags = segment_tags(pending.item.tags, row, positions)
                message = self.prediction(sample_id, value, served_at, model.version, tags, next(estimates))
                owner[id(message)] = k
                messages.append(message)

        def confirmed(round_: Sequence[Outgoing]) -> None:
            done = []
            for message in round_:
                k = owner[id(message)]
                unconfirmed[k] -= 1
                if unconfirmed[k] == 0:
                    done.append(answers[k])
            self._answer(model, done)

        await self.link.publisher.publish_many(messages, confirmed)

    def _answer(self, model: LoadedModel, answers: Sequence[tuple[Pending[PredictJob, Outcome], Served]]) -> None:
        """Count and observe (drift) what is served, then answer each request."""
        if not answers:
            return
        self.count_served(model.version, "http", sum(len(answer.ids) for _, answer in answers))
        self.drift.observe(
            [row for pending, _ in answers for row in pending.item.rows], [v for _, answer in answers for v in answer.values]
        )
        for pending, answer in answers:
            pending.settle(answer)

    def count_served(self, version: str, path: str, count: int) -> None:
        self.served.setdefault(version, Tally())[path] += count
        SERVED.labels(path=path, model_version=version).inc(count)

    def _warn_of_numeric_segment_keys(self, model: LoadedModel) -> None:
        schema = model.schema
        if (warning := numeric_segment_keys(self.settings.segment_keys, schema.names, schema.categorical)) is not None:
            log.warning("%s", warning)

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
            self._warn_of_numeric_segment_keys(new)
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
        await self.http_group.close()
        await self.link.close()
        await self.drift.stop()
