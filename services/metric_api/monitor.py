"""What metric_api tells about the model: the summary JSON, the alert, and the Prometheus
metrics of model quality, around the pure ``QualityStats`` core."""

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.alerts import AlertBoard
from services.common.contracts.summary import Summary
from services.common.estimate import Calibration, calibration_of
from services.common.files import metadata_path
from services.common.metric_rows import MetricRow
from services.common.reference import read_reference
from services.common.registration import RegistrationError, read_registration
from services.common.settings import Settings
from services.metric_api.alerts import ALERT_ROWS, CusumMaeAlert, Decision, MaeAlert, threshold_decision
from services.metric_api.cusum import Calibration as CusumCalibration
from services.metric_api.cusum import CalibrationError, calibrate
from services.metric_api.estimate import ALERT_PREFIX as ESTIMATE_ALERT_PREFIX
from services.metric_api.estimate import EstimateTracker
from services.metric_api.segment_metrics import SEGMENTS
from services.metric_api.where_when import SegmentAlerts, SegmentedStats, WhereWhenConfig

log = logging.getLogger(__name__)

TIME_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
END_TO_END_LATENCY = Histogram(
    "end_to_end_latency_seconds",
    "From a sample's publish by features_api (its ts) to its row being durable in metric_log.csv",
    buckets=TIME_BUCKETS_S,
)
LABEL_PREDICTION_LAG = Histogram(
    "label_prediction_lag_seconds",
    "How long the first half of a row (label or prediction) waited for the second",
    buckets=TIME_BUCKETS_S,
)
LABEL_LAG = Histogram(
    "label_lag_seconds",
    "How long after its prediction a row's label came (0 when it came first), as the join saw them",
    buckets=(*TIME_BUCKETS_S, 4 * 3600, 86400, 7 * 86400),
)
MAE_ALERT_NAME = "mae"
MAE_ALERT_RAISED = Gauge("model_mae_alert", "1 while the MAE alert is raised, else 0")
MAE_CHANGE = Gauge(
    "model_mae_change_statistic", "The MAE detector's CUSUM as a share of its threshold (1: the alert changes state)"
)
WARM_ROWS = 1000  # the newest rows the CUSUM is fed again at start-up


@dataclass(frozen=True)
class Waiting:
    """The halves waiting for their partner, as the ledger last counted them."""

    predictions: int  # predictions without their label yet, orphans included
    by_age: dict[str, dict[str, int]]  # kind -> age bucket -> halves

    def key(self) -> tuple[int, ...]:
        return (self.predictions, *(n for ages in self.by_age.values() for n in ages.values()))


@dataclass(frozen=True)
class Baseline:
    """The constant predictor baseline_mae and skill are measured against."""

    mean: float | None
    source: str | None
    problem: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"mean": self.mean, "source": self.source, "problem": self.problem}


def read_baseline(settings: Settings) -> Baseline:
    """BASELINE_MEAN if set, else ``target_mean`` of the model's sidecar file."""
    if settings.BASELINE_MEAN is not None:
        return Baseline(settings.BASELINE_MEAN, "BASELINE_MEAN")
    sidecar = metadata_path(settings.MODEL_PATH)
    try:
        mean = target_mean(sidecar)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = (
            f"no baseline: cannot read target_mean from {sidecar} ({type(exc).__name__}: {exc}); "
            "set BASELINE_MEAN to the training-set mean of y"
        )
        return Baseline(None, None, problem)
    return Baseline(mean, f"{sidecar} target_mean")


def mae_alert(settings: Settings) -> tuple[MaeAlert | CusumMaeAlert | None, str]:
    """The MAE alert MAE_DETECTOR asks for (None: none) and a line saying what it is, or why there is none."""
    if settings.mae_detector == "threshold":
        if settings.MAE_ALERT is None:
            return None, "no MAE alert: MAE_DETECTOR=threshold needs MAE_ALERT"
        return MaeAlert(settings.MAE_ALERT), f"threshold: the last_100 MAE above MAE_ALERT={settings.MAE_ALERT:g}"
    calibrated = reference_calibration(settings.MODEL_PATH)
    if isinstance(calibrated, str):
        why = f"no MAE alert: the CUSUM has nothing to calibrate on ({calibrated}); or set MAE_DETECTOR=threshold"
        log.warning(why)
        return None, why
    c, version = calibrated
    return CusumMaeAlert(c, version), (
        f"CUSUM for a {c.shift:.0%} rise of the MAE from the reference's {c.mean:.4g} "
        f"(h={c.h:.3g}: a false alarm every {c.arl0:,.0f} calm rows; about {c.arl1:,.0f} rows to detect)"
    )


def reference_calibration(model_path: Path) -> tuple[CusumCalibration, str] | str:
    """The CUSUM calibrated on the absolute errors of the model's reference rows, and the model's
    version; or why it cannot be."""
    try:
        registration = read_registration(model_path)
        loaded = read_reference(model_path, registration.metadata, registration.schema)
        if isinstance(loaded, str):
            return loaded
        return calibrate(abs(loaded.table.target - loaded.table.prediction)), registration.model_version
    except (RegistrationError, CalibrationError) as exc:
        return str(exc)


def target_mean(sidecar: Path) -> float:
    """``target_mean`` of a model's sidecar file; ValueError if it is not a finite number."""
    mean = json.loads(sidecar.read_text())["target_mean"]
    if isinstance(mean, bool) or not isinstance(mean, int | float) or not math.isfinite(mean):
        raise ValueError(f"target_mean is {mean!r}, not a finite number")
    return float(mean)


@dataclass(frozen=True)
class EstimateProfile:
    """What the sidecar says of the loss model: its calibration, for the version it vouches for, or why there is none."""

    calibrations: dict[str, Calibration]
    problem: str | None


def read_estimate_profile(settings: Settings) -> EstimateProfile:
    try:
        registration = read_registration(settings.MODEL_PATH)
    except RegistrationError as exc:
        return EstimateProfile({}, f"estimate unavailable, because the model's metadata cannot be read: {exc}")
    calibration = calibration_of(registration.metadata)
    if calibration is None:
        return EstimateProfile(
            {},
            f"estimate unavailable, because {registration.sidecar} records no loss model: register the model again "
            "(or train the demo), which fits one",
        )
    return EstimateProfile({registration.model_version: calibration}, None)


class QualityMonitor:
    """The statistics core of the running service, its alert and its summary, cached."""

    def __init__(self, settings: Settings, service: str = "metric_api") -> None:
        self.baseline = read_baseline(settings)
        self.where_when = WhereWhenConfig(
            settings.segment_keys,
            settings.SEGMENT_VALUES_MAX,
            settings.TIME_BUCKET_S,
            settings.TIME_BUCKETS_KEPT,
            settings.ALL_EXACT_ROWS,
        )
        self.core = self.new_core()
        self.alert, about = mae_alert(settings)
        url = settings.ALERT_WEBHOOK_URL
        self.alerts = AlertBoard(service, str(url) if url is not None else None)  # every alert of metric_api
        if self.alert is not None:
            self.alerts.declare(MAE_ALERT_NAME, about)
        self.settings = settings
        self.estimate_profile = read_estimate_profile(settings)
        self.estimates = EstimateTracker(self.estimate_profile.calibrations)
        self.segment_alerts = SegmentAlerts(
            self.alerts, settings.SEGMENT_ALERT_FACTOR, settings.SEGMENT_ALERT_MIN_ROWS, self.estimates.largest_bias
        )
        self._core_cached: tuple[tuple[int, int], dict[str, Any]] | None = None
        self._cached: tuple[tuple[Any, ...], bytes] | None = None
        _COLLECTOR.monitor = self
        SEGMENTS.summary = self.core_summary

    def new_core(self) -> SegmentedStats:
        return SegmentedStats(self.baseline.mean, self.where_when)

    # -- fed by the service
    def replace(self, core: SegmentedStats, now: float) -> None:
        """Take the core rebuilt at start-up."""
        self.core = core
        self._core_cached = self._cached = None
        if isinstance(self.alert, CusumMaeAlert):
            self.alert.reset()
        self._check_alert(now, core.last(WARM_ROWS))
        self.segment_alerts.check_all(core, now)

    def add_rows(self, rows: Sequence[MetricRow], now: float) -> None:
        """The rows of one committed batch, durable at ``now``."""
        if not rows:
            return
        try:
            latencies, lags = self.core.add_rows(rows, now)
            for latency in latencies:
                END_TO_END_LATENCY.observe(latency)
            for lag in lags:
                LABEL_PREDICTION_LAG.observe(lag)
            for row in rows:
                if row.label_lag_s is not None:
                    LABEL_LAG.observe(row.label_lag_s)
            self._check_alert(now, rows)
            self.segment_alerts.check(self.core, now)
            self._check_estimates(rows, now)
        except Exception:  # the rows are durable; a statistics bug must not stop the batch worker
            log.exception("could not add %d rows to the statistics; /metrics/summary misses them until a restart", len(rows))

    def add_predictions(self, made_at: Sequence[float], now: float) -> None:
        """The predictions of one committed batch (held, or joined at once), for the buckets by prediction time."""
        try:
            self.core.add_predictions(made_at, now)
        except Exception:  # as add_rows: the predictions are durable; a statistics bug must not stop the batch worker
            log.exception("could not count %d predictions by time; /metrics/by-time misses them until a restart", len(made_at))

    def add_estimates(self, predictions: Sequence[tuple[str, float | None]]) -> None:
        """The predictions one committed batch saw first (model version, estimated error), labelled or not."""
        if not predictions:
            return
        if any(version not in self.estimates.versions for version, _ in predictions):
            # A version not seen yet (a model registered and reloaded since): its calibration, if the sidecar has it now.
            self.estimate_profile = read_estimate_profile(self.settings)
            for version, calibration in self.estimate_profile.calibrations.items():
                self.estimates.calibrations.setdefault(version, calibration)
        self.estimates.add_predictions(predictions)

    def _check_estimates(self, rows: Sequence[MetricRow], now: float) -> None:
        for result in self.estimates.add_rows(rows):
            name = ESTIMATE_ALERT_PREFIX + result.version
            self.alerts.set(name, result.raised, now, result.summary(), result.details())

    def _check_alert(self, now: float, rows: Sequence[MetricRow]) -> None:
        decisions: list[Decision]
        if isinstance(self.alert, CusumMaeAlert):
            decisions = self.alert.take(rows, now)
            MAE_CHANGE.set(self.alert.statistic)
        elif self.alert is not None:
            change = self.alert.check(self.core.recent_mae(ALERT_ROWS), now)
            decisions = [threshold_decision(change)] if change is not None else []
        else:
            return
        for raised, summary, details in decisions:
            MAE_ALERT_RAISED.set(1 if raised else 0)
            self.alerts.set(MAE_ALERT_NAME, raised, now, summary, details)

    async def close(self) -> None:
        await self.alerts.close()

    def estimate_summary(self) -> dict[str, Any]:
        versions = self.estimates.summary()
        seen = any(state["windows"]["all"]["predictions"] for state in versions.values())
        because = None
        if not seen:
            because = self.estimate_profile.problem or (
                "no prediction has carried an estimated error yet (GET :8002/model/info says whether the model has a loss model)"
            )
        return {"available": seen, "unavailable_because": because, "by_model_version": versions}

    # -- read by /metrics/summary and /metrics
    def core_summary(self, now: float) -> dict[str, Any]:
        """The core's numbers, computed at most once a second while no row comes."""
        key = (self.core.count, int(now))
        if self._core_cached is None or self._core_cached[0] != key:
            self._core_cached = (key, self.core.summary(now))
        return self._core_cached[1]

    def summary(self, join: dict[str, int], csv: str, now: float, waiting: Waiting | None = None) -> bytes:
        """The summary (``Summary``) as its JSON, made again only when something in it changed:
        the route serves these bytes as they are, without validating them again."""
        waiting = waiting or Waiting(0, {})
        core = self.core_summary(now)
        alert = self.alert.state() if self.alert else None
        assert self._core_cached is not None
        key = (self._core_cached[0], tuple(join.values()), waiting.key(), self.alerts.key(), csv, self.estimates.changes)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        all_rows = core["windows"]["all"]
        predictions = all_rows["count"] + waiting.predictions
        summary = Summary(
            count=all_rows["count"],
            mae=all_rows["mae"],
            rmse=all_rows["rmse"],
            windows=core["windows"],
            by_model_version=core["by_model_version"],
            join={**join, "lag_p50_s": core["lag"]["p50_s"], "lag_p99_s": core["lag"]["p99_s"]},
            labels={
                "predictions": predictions,
                "labelled": all_rows["count"],
                "labelled_share": all_rows["count"] / predictions if predictions else None,
                "lag_p50_s": core["label_lag"]["p50_s"],
                "lag_p99_s": core["label_lag"]["p99_s"],
                "waiting": waiting.by_age,
            },
            latency=core["latency"],
            last_id=core["last_id"],
            last_row_at=core["last_row_at"],
            rows_per_s=core["rows_per_s"],
            excluded_rows=core["excluded_rows"],
            alert=alert,
            alerts=self.alerts.to_json(),
            segments=core["segments"],
            approximate=core["approximate"],
            baseline=self.baseline.describe(),
            csv=csv,
            estimate=self.estimate_summary(),
        )
        body = summary.model_dump_json().encode()
        self._cached = (key, body)
        return body


class _ModelQualityCollector(Collector):
    """model_mae and model_rmse by window, computed at scrape time (cached for a second)."""

    def __init__(self) -> None:
        self.monitor: QualityMonitor | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        mae = GaugeMetricFamily("model_mae", "Mean absolute error of the model, by window of rows", labels=["window"])
        rmse = GaugeMetricFamily("model_rmse", "Root mean squared error of the model, by window", labels=["window"])
        windows = self.monitor.core_summary(time.time())["windows"] if self.monitor else {}
        for name, window in windows.items():
            if window["mae"] is not None:
                mae.add_metric([name], window["mae"])
                rmse.add_metric([name], window["rmse"])
        yield mae
        yield rmse
        yield from self.estimate_gauges()

    def estimate_gauges(self) -> Iterator[GaugeMetricFamily]:
        estimated = GaugeMetricFamily(
            "model_estimated_mae", "Estimated MAE of the recent predictions, labelled or not", labels=["model_version", "window"]
        )
        band = GaugeMetricFamily(
            "model_estimated_mae_band", "Half-width of the estimated MAE's band", labels=["model_version", "window"]
        )
        checked = GaugeMetricFamily(
            "model_checked_mae",
            "Joined rows with an estimate: their realized MAE and the estimated MAE of the same ids",
            labels=["model_version", "window", "kind"],
        )
        versions = self.monitor.estimates.summary() if self.monitor else {}
        for version, state in versions.items():
            for name, window in state["windows"].items():
                if window["estimated_mae"] is not None:
                    estimated.add_metric([version, name], window["estimated_mae"])
                if window["band"] is not None:
                    band.add_metric([version, name], window["band"])
            for name, window in state["checked"].items():
                for kind in ("realized", "estimated"):
                    if window[f"{kind}_mae"] is not None:
                        checked.add_metric([version, name, kind], window[f"{kind}_mae"])
        yield estimated
        yield band
        yield checked


_COLLECTOR = _ModelQualityCollector()
REGISTRY.register(_COLLECTOR)
