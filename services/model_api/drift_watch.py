"""model_api's drift watch: the drift monitor fed by every way in (the ``features`` and
``predictions`` queues, ``POST /predict`` and ``POST /predictions``), the inputs refused counted
by reason, the data quality (missing values and unseen categories) counted per feature, the
Prometheus gauges and the drift alert kept current once a second, and ``GET /drift``'s answer.

The statistics are in the ``drift`` package (no I/O); the reference file in ``services/common/reference.py``.
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from services.common.alerts import AlertBoard
from services.common.reference import read_reference
from services.common.schema import UNSEEN, FeatureSchema
from services.common.settings import Settings
from services.model_api.drift import PREDICTION, REASSESS_S, BadReference, DriftAlert, DriftMonitor, Reference
from services.model_api.modelstore import LoadedModel

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
# The statistics a column's gauges show (each where the column's kind has it: NaN otherwise).
METHODS = (
    "ks_p",
    "ks_statistic",
    "chi2_p",
    "psi",
    "js",
    "wasserstein_norm",
    "out_of_range_share",
    "unseen_share",
    "missing_share",
)
# Why an input was refused: the schema's problem kinds (services/common/schema.py), a list published
# for another schema, the model refusing or predicting no sane number for it, anything else.
REFUSAL_KINDS = (
    "missing_feature",
    "unknown_feature",
    "feature_count",
    "wrong_type",
    "non_finite",
    "out_of_range",
    "not_a_body",
    "schema_changed",
    "unpredictable",
    "other",
)
PATHS = ("queue", "http")

DRIFT_STATISTIC = Gauge(
    "model_drift_statistic", "A drift statistic of one column of the window against the model's reference", ["feature", "method"]
)
DRIFT_DETECTED = Gauge(
    "model_drift_detected", "1 while the column drifted (the prediction's column is 'prediction')", ["feature"]
)
DRIFT_ALERT = Gauge("model_drift_alert", "1 while any column of the window drifted")
DRIFT_ALERT_NAME = "drift"  # on the board (services/common/alerts.py): monitor_alert_raised{alert="drift"}
DRIFT_AVAILABLE = Gauge("model_drift_available", "1 when the model has a usable drift reference")
DRIFT_WINDOW = Gauge("model_drift_window_samples", "Samples in the drift window")
INPUTS_REFUSED = Counter("model_inputs_refused", "Inputs refused before or at prediction, by path and reason", ["path", "reason"])
MISSING_VALUES = Counter("model_feature_missing_values", "Feature values sent as null (missing), per feature", ["feature"])
UNSEEN_VALUES = Counter(
    "model_feature_unseen_values", "Categorical values the reference never showed (served, counted), per feature", ["feature"]
)
PER_FEATURE = (DRIFT_STATISTIC, DRIFT_DETECTED, MISSING_VALUES, UNSEEN_VALUES)


def refusal_kind(errors: Sequence[Mapping[str, Any]]) -> str:
    """Why a features body was refused, from its validation errors: the schema's problem kind
    (``feature_<kind>`` errors, services/common/messages.py) or ``other`` (a bad id, say)."""
    for error in errors:
        kind = str(error.get("type", "")).removeprefix("feature_")
        if kind in REFUSAL_KINDS and kind != "other":
            return kind
        if tuple(error.get("loc", ()))[-1:] in (("body",), ("features",)) and kind in ("dict_type", "list_type"):
            return "not_a_body"  # neither an object nor a list where the features go
    return "other"


class DataQuality:
    """Missing values and unseen categories per feature since the model came into service."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self.missing = np.zeros(len(schema), dtype=np.int64)
        self.unseen = np.zeros(len(schema), dtype=np.int64)
        self.rows = 0

    def count(self, encoded: np.ndarray) -> None:
        """Rows as the window holds them (``FeatureSchema.encode``: NaN missing, ``UNSEEN`` unseen)."""
        if not len(encoded):
            return
        self.rows += len(encoded)
        missing = np.isnan(encoded).sum(axis=0)
        if missing.any():
            self.missing += missing
            for j in np.flatnonzero(missing):
                MISSING_VALUES.labels(feature=self.schema.names[j]).inc(int(missing[j]))
        categorical = list(self.schema.categorical)
        if categorical:
            unseen = np.zeros(len(self.schema), dtype=np.int64)
            unseen[categorical] = (encoded[:, categorical] == UNSEEN).sum(axis=0)
            if unseen.any():
                self.unseen += unseen
                for j in np.flatnonzero(unseen):
                    UNSEEN_VALUES.labels(feature=self.schema.names[j]).inc(int(unseen[j]))

    def to_json(self) -> dict[str, Any]:
        """The features with any missing or unseen value, and how many, over ``rows`` inputs."""
        names = self.schema.names
        return {
            "rows": self.rows,
            "missing": {names[j]: int(self.missing[j]) for j in np.flatnonzero(self.missing)},
            "unseen": {names[j]: int(self.unseen[j]) for j in np.flatnonzero(self.unseen)},
        }


class DriftWatch:
    """The drift monitor of the model in service, its gauges, its alert and its webhook."""

    def __init__(self, settings: Settings, model: LoadedModel, service: str = "model_api") -> None:
        self.settings = settings
        self.alert = DriftAlert()
        url = settings.ALERT_WEBHOOK_URL
        self.alerts = AlertBoard(service, str(url) if url is not None else None)  # every alert of model_api
        self.alerts.declare(DRIFT_ALERT_NAME)
        self.refused: dict[str, Tally[str]] = {path: Tally() for path in PATHS}
        self.started_at = time.time()
        self._task: asyncio.Task[None] | None = None
        self._gauged: dict[str, Any] | None = None  # the report the gauges show
        self.monitor, self.reference_file = self.monitor_for(model)
        self.schema = model.schema
        self.quality = DataQuality(model.schema)
        self.model_version = model.version

    # -- the model in service
    def monitor_for(self, model: LoadedModel) -> tuple[DriftMonitor, dict[str, Any] | None]:
        """A fresh monitor against ``model``'s reference (file I/O: a thread may run it)."""
        size, age = self.settings.DRIFT_WINDOW_SIZE, self.settings.DRIFT_WINDOW_S
        loaded = read_reference(model.path, model.metadata, model.schema)
        try:
            reference = loaded if isinstance(loaded, str) else Reference.from_table(loaded.table)
        except BadReference as exc:
            reference = f"the reference {getattr(loaded, 'path', '')} is unusable for drift: {exc}"
        if isinstance(reference, str) or isinstance(loaded, str):
            why = reference if isinstance(reference, str) else str(loaded)
            log.warning("drift unavailable for model %s: %s", model.version, why)
            return DriftMonitor(None, model.schema, size, age, unavailable=why), None
        monitor = DriftMonitor(reference, model.schema, size, age, reassess_s=REASSESS_S)
        return monitor, {"file": str(loaded.path), "sha256": loaded.sha256}

    def use(self, model: LoadedModel, monitor: tuple[DriftMonitor, dict[str, Any] | None]) -> None:
        """Put another model's monitor in service: its window starts empty (its predictions are another's)."""
        if model.version != self.model_version:
            if model.schema != self.schema:
                for metric in PER_FEATURE:  # the old schema's features are no longer watched: no stale series
                    metric.clear()
                self.quality = DataQuality(model.schema)
            self.monitor, self.reference_file = monitor
            self.schema = model.schema
            self.model_version = model.version
            self._gauged = None

    # -- fed by every way in
    def observe(self, rows: Sequence[Sequence[float | str | None]], predictions: Sequence[float]) -> None:
        """Rows (validated, in schema order) and their predictions: the data quality is counted, and
        the rows predicted a finite number for go into the window (the others were refused, and counted so)."""
        if len(rows) == 0:
            return
        matrix, values = self.schema.encode(rows), np.asarray(predictions, dtype=float)
        self.quality.count(matrix)
        finite = np.isfinite(values)
        if not finite.all():
            matrix, values = matrix[finite], values[finite]
        self.monitor.observe(matrix, values, time.time())

    def refuse(self, path: str, kind: str, count: int = 1) -> None:
        self.refused[path][kind] += count
        INPUTS_REFUSED.labels(path=path, reason=kind).inc(count)

    def refused_from_queue(self, error: ValidationError | None) -> None:
        """The consumer's hook: a features message dead-lettered before prediction (None: too large)."""
        self.refuse("queue", "other" if error is None else refusal_kind(error.errors(include_url=False)))

    # -- read by GET /drift, the gauges and the alert
    def report(self, now: float) -> dict[str, Any]:
        report = self.monitor.assess(now)
        reference = report["reference"] and {**report["reference"], **(self.reference_file or {})}
        refused = {path: {kind: tally[kind] for kind in REFUSAL_KINDS} for path, tally in self.refused.items()}
        return {
            **report,
            "model_version": self.model_version,
            "reference": reference,
            "refused": {**refused, "since": self.started_at},
            "quality": self.quality.to_json(),
        }

    def check(self, now: float) -> None:
        """Bring the gauges and the alert up to date with the window (cheap when it did not change)."""
        report = self.monitor.assess(now)
        if report is self._gauged:
            return
        self._gauged = report
        DRIFT_WINDOW.set(report["window"]["count"])
        DRIFT_AVAILABLE.set(0 if report["status"] == "unavailable" else 1)
        columns = {**report["features"], PREDICTION: report["prediction"]}
        for name, column in columns.items():
            DRIFT_DETECTED.labels(feature=name).set(1 if column["drifted"] else 0)
            for method in METHODS:
                if method not in column:  # not a statistic of this column's kind
                    continue
                value = column[method]
                DRIFT_STATISTIC.labels(feature=name, method=method).set(float("nan") if value is None else value)
        change = self.alert.check(report, now)
        if change is None:
            return
        DRIFT_ALERT.set(1 if change.state == "raised" else 0)
        count = change.window_count
        summary = (
            f"{', '.join(change.drifted)} drifted over the last {count} samples ({change.rule})"
            if change.state == "raised"
            else f"no column drifted over the last {count} samples"
        )
        details = {"drifted": list(change.drifted), "window_count": count, "rule": change.rule}
        self.alerts.set(DRIFT_ALERT_NAME, change.state == "raised", now, summary, details)

    async def _run(self) -> None:
        while True:
            try:
                self.check(time.time())
            except Exception:  # a statistics bug must not stop the watch, nor the service
                log.exception("could not assess drift; trying again in %s s", CHECK_INTERVAL_S)
            await asyncio.sleep(CHECK_INTERVAL_S)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="drift-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.alerts.close()
