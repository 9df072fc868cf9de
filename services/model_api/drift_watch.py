"""model_api's drift watch: the drift monitor fed from both paths (the features queue and
``POST /predict``), the inputs refused before prediction counted by reason, the Prometheus
gauges and the drift alert kept current once a second, and ``GET /drift``'s answer.

The statistics are in ``drift.py`` (no I/O); the reference file in ``reference_file.py``.
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

from services.common.messages import FEATURE_COUNT
from services.common.settings import Settings
from services.common.webhook import WebhookNotifier
from services.model_api.drift import COLUMNS, PREDICTION, REASSESS_S, DriftAlert, DriftMonitor
from services.model_api.modelstore import LoadedModel
from services.model_api.reference_file import read_reference

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
METHODS = ("ks_p", "ks_statistic", "psi", "js", "wasserstein_norm", "out_of_range_share")
REFUSAL_KINDS = ("non_finite", "missing", "feature_count", "unpredictable", "other")
PATHS = ("queue", "http")

DRIFT_STATISTIC = Gauge(
    "model_drift_statistic", "A drift statistic of one column of the window against the model's reference", ["feature", "method"]
)
DRIFT_DETECTED = Gauge(
    "model_drift_detected", "1 while the column drifted (the prediction's column is 'prediction')", ["feature"]
)
DRIFT_ALERT = Gauge("model_drift_alert", "1 while any column of the window drifted")
DRIFT_AVAILABLE = Gauge("model_drift_available", "1 when the model has a usable drift reference")
DRIFT_WINDOW = Gauge("model_drift_window_samples", "Samples in the drift window")
INPUTS_REFUSED = Counter("model_inputs_refused", "Inputs refused before or at prediction, by path and reason", ["path", "reason"])


def refusal_kind(errors: Sequence[Mapping[str, Any]]) -> str:
    """Why a features row was refused, from its validation errors: ``non_finite`` (NaN, Infinity),
    ``missing`` (null or absent), ``feature_count`` (not 10 numbers) or ``other``."""
    types = {error.get("type") for error in errors}
    if "finite_number" in types:
        return "non_finite"
    for error in errors:
        limits = error.get("ctx") or {}
        if error.get("type") in ("too_short", "too_long") and FEATURE_COUNT in (
            limits.get("min_length"),
            limits.get("max_length"),
        ):
            return "feature_count"
    if "missing" in types or any(error.get("type") == "float_type" and error.get("input", 0) is None for error in errors):
        return "missing"
    return "other"


class DriftWatch:
    """The drift monitor of the model in service, its gauges, its alert and its webhook."""

    def __init__(self, settings: Settings, model: LoadedModel, service: str = "model_api") -> None:
        self.settings = settings
        self.alert = DriftAlert()
        url = settings.ALERT_WEBHOOK_URL
        self.notifier = WebhookNotifier(str(url), service) if url is not None else None
        self.refused: dict[str, Tally[str]] = {path: Tally() for path in PATHS}
        self.started_at = time.time()
        self._task: asyncio.Task[None] | None = None
        self._gauged: dict[str, Any] | None = None  # the report the gauges show
        self.monitor, self.reference_file = self.monitor_for(model)
        self.model_version = model.version

    # -- the model in service
    def monitor_for(self, model: LoadedModel) -> tuple[DriftMonitor, dict[str, Any] | None]:
        """A fresh monitor against ``model``'s reference (file I/O: a thread may run it)."""
        size, age = self.settings.DRIFT_WINDOW_SIZE, self.settings.DRIFT_WINDOW_S
        loaded = read_reference(model.path, model.metadata)
        if isinstance(loaded, str):
            log.warning("drift unavailable for model %s: %s", model.version, loaded)
            return DriftMonitor(None, size, age, unavailable=loaded), None
        monitor = DriftMonitor(loaded.reference, size, age, reassess_s=REASSESS_S)
        return monitor, {"file": str(loaded.path), "sha256": loaded.sha256}

    def use(self, model: LoadedModel, monitor: tuple[DriftMonitor, dict[str, Any] | None]) -> None:
        """Put another model's monitor in service: its window starts empty (its predictions are another's)."""
        if model.version != self.model_version:
            self.monitor, self.reference_file = monitor
            self.model_version = model.version
            self._gauged = None

    # -- fed by both paths
    def observe(self, rows: Sequence[Sequence[float]] | np.ndarray, predictions: Sequence[float]) -> None:
        """Rows the model predicted for, and those predictions: the rows predicted a finite number
        for go into the window (the others are refused, and counted so)."""
        if len(rows) == 0:
            return
        matrix, values = np.asarray(rows, dtype=float), np.asarray(predictions, dtype=float)
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
        for name in COLUMNS:
            column = columns[name]
            DRIFT_DETECTED.labels(feature=name).set(1 if column["drifted"] else 0)
            for method in METHODS:
                value = column.get(method)
                DRIFT_STATISTIC.labels(feature=name, method=method).set(float("nan") if value is None else value)
        change = self.alert.check(report, now)
        if change is None:
            return
        DRIFT_ALERT.set(1 if change.state == "raised" else 0)
        if change.state == "raised":
            log.warning(
                "DRIFT: %s drifted over the last %d samples (%s)", ", ".join(change.drifted), change.window_count, change.rule
            )
        else:
            log.info("drift cleared: no column drifted over the last %d samples", change.window_count)
        if self.notifier is not None:
            self.notifier.send(change)

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
        if self.notifier is not None:
            await self.notifier.close()
