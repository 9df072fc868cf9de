"""The estimated MAE before the labels come, and the estimate checked id by id when they do (issue 24). No I/O.

Every prediction model_api makes carries its loss model's estimate of its absolute error
(``estimated_error`` in y_pred; services/common/estimate.py). Per model version:

- **estimated MAE** over the recent *predictions*, labelled or not (``all`` since metric_api
  started, ``last_100``, ``last_300``, ``last_1000``), with a band: the calibration the sidecar recorded for
  that version (``|bias| + 1.96·residual_sd/√n``, measured on reference rows the loss model did
  not see), else the same computed from the version's own joined rows (``band_basis`` says
  which), else null;
- **the check**: for the joined rows that had an estimate, the realized MAE beside the estimated
  MAE *of the same ids* (``all`` and the last ``CHECK_ROWS``), the band from the residuals
  ``|e| - estimate`` of those very rows.

**The alert** ``estimate/<model_version>`` is raised when over the last ``CHECK_ROWS`` joined rows
(at least ``CHECK_MIN_ROWS``) the realized MAE exceeds the estimated one by more than
``tolerance + ALERT_Z·sd/√n`` (``sd`` the residuals' spread in the window, ``tolerance`` the larger
of the calibration's ``|bias|`` and ``ALERT_REL_TOL`` of the estimate): the inputs look familiar
to the loss model, the labels say the model is wrong about them (concept drift). It clears when
the excess is back under ``tolerance + CLEAR_Z·sd/√n``.

Memory is bounded: per version, the newest ``WINDOW_MAX`` estimates and ``WINDOW_MAX`` joined
pairs, and running sums. The state is the running process's (it starts empty at a restart; the
estimates of predictions still waiting for their label are kept durably with them).
"""

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.estimate import BAND_Z, Calibration, band
from services.common.metric_rows import MetricRow

PREDICTION_WINDOWS = {"last_100": 100, "last_300": 300, "last_1000": 1000}
CHECK_ROWS = 300
CHECK_WINDOWS = {f"last_{CHECK_ROWS}": CHECK_ROWS, "last_1000": 1000}
WINDOW_MAX = 1000
CHECK_MIN_ROWS = 100
LIVE_MIN_ROWS = 30  # joined rows before a version's own residuals make its band
ALERT_Z = 3.0  # bench/estimate.py: no raise in 150,000 calm joined rows checked after each; 4.0 was slower to see a concept shift
CLEAR_Z = 2.0
ALERT_REL_TOL = 0.05
ALERT_PREFIX = "estimate/"


@dataclass(frozen=True)
class CheckResult:
    """The last ``rows`` joined rows of a version: realized against estimated, and whether that alerts."""

    version: str
    rows: int
    realized: float
    estimated: float
    band: float  # the excess the realized MAE may have over the estimate before the alert is raised
    raised: bool

    def details(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "rows": self.rows,
            "realized_mae": self.realized,
            "estimated_mae": self.estimated,
            "band": self.band,
        }

    def summary(self) -> str:
        relation = "above" if self.raised else "within"
        return (
            f"model {self.version}: over the last {self.rows} joined rows the realized MAE {self.realized:.4g} is "
            f"{relation} the estimated {self.estimated:.4g} + {self.band:.3g}: the model errs more than its inputs say"
            if self.raised
            else f"model {self.version}: over the last {self.rows} joined rows the realized MAE {self.realized:.4g} is "
            f"{relation} the estimated {self.estimated:.4g} + {self.band:.3g}"
        )


@dataclass
class _Version:
    estimates: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_MAX))
    predictions: int = 0  # with an estimate
    estimate_sum: float = 0.0
    without: int = 0  # predictions that came without an estimate
    pairs: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=WINDOW_MAX))  # (|e|, estimate)
    joined: int = 0
    loss_sum: float = 0.0
    joined_estimate_sum: float = 0.0
    residual_sq_sum: float = 0.0
    raised: bool = False


def check_window(
    loss: np.ndarray, estimate: np.ndarray, bias: float, raised: bool, alert_z: float = ALERT_Z
) -> tuple[float, float, float, bool]:
    """The check of some joined rows (at least 2): their realized MAE, their estimated MAE, the excess
    allowed (``tolerance + z·sd/√n``, ``z`` = ``alert_z`` to raise, ``CLEAR_Z`` to stay raised; the
    tolerance the larger of ``bias`` and ``ALERT_REL_TOL`` of the estimate), and whether the alert is
    raised after it (``raised``: whether it was before)."""
    n = len(loss)
    realized, estimated = float(loss.sum()) / n, float(estimate.sum()) / n
    residual = loss - estimate - (realized - estimated)  # centred: the sum of squares without cancellation
    sd = math.sqrt(float(residual @ residual) / (n - 1))
    tolerance = max(bias, ALERT_REL_TOL * estimated)
    allowed = tolerance + (CLEAR_Z if raised else alert_z) * sd / math.sqrt(n)
    return realized, estimated, allowed, realized - estimated > allowed


def checked_rows(loss: np.ndarray, estimate: np.ndarray) -> dict[str, Any]:
    """Joined rows with an estimate, as a ``checked`` window: their count, realized MAE, estimated MAE
    and the band (``BAND_Z``·sd(|e| − estimate)/√n, null below 2 rows)."""
    n = len(loss)
    band = BAND_Z * float(np.std(loss - estimate, ddof=1)) / math.sqrt(n) if n >= 2 else None
    return {"rows": n, "realized_mae": _mean(loss), "estimated_mae": _mean(estimate), "band": band}


def _mean(values: Sequence[float] | np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _newest(values: deque[Any], n: int) -> list[Any]:
    return list(values)[-n:] if n < len(values) else list(values)


class EstimateTracker:
    """Per model version: the estimates of the predictions, the estimates of the joined rows beside their errors."""

    def __init__(self, calibrations: dict[str, Calibration] | None = None, alert_z: float = ALERT_Z) -> None:
        self.calibrations = dict(calibrations or {})
        self.alert_z = alert_z
        self.versions: dict[str, _Version] = {}
        self.changes = 0  # moves whenever something in the summary may have changed

    def _version(self, version: str) -> _Version:
        return self.versions.setdefault(version, _Version())

    # -- fed by the service
    def add_predictions(self, predictions: Iterable[tuple[str, float | None]]) -> None:
        """Predictions seen for the first time: (model version, estimated error or None)."""
        for version, estimate in predictions:
            state = self._version(version)
            if estimate is None or not math.isfinite(estimate):
                state.without += 1
                continue
            state.estimates.append(estimate)
            state.predictions += 1
            state.estimate_sum += estimate
        self.changes += 1

    def add_rows(self, rows: Iterable[MetricRow]) -> list[CheckResult]:
        """Joined rows; the check of every version that got a row with an estimate, when it has enough rows."""
        touched: set[str] = set()
        for row in rows:
            if row.estimated_error is None or not math.isfinite(row.estimated_error):
                continue
            version = row.model_version or "unknown"
            state = self._version(version)
            state.pairs.append((row.absolute_error, row.estimated_error))
            state.joined += 1
            state.loss_sum += row.absolute_error
            state.joined_estimate_sum += row.estimated_error
            state.residual_sq_sum += (row.absolute_error - row.estimated_error) ** 2
            touched.add(version)
        self.changes += 1
        return [result for version in sorted(touched) if (result := self.check(version)) is not None]

    # -- the check
    def check(self, version: str) -> CheckResult | None:
        """The last CHECK_ROWS joined rows of ``version`` against their estimates (None below CHECK_MIN_ROWS);
        updates whether its alert is raised."""
        state = self.versions.get(version)
        if state is None or len(state.pairs) < CHECK_MIN_ROWS:
            return None
        pairs = np.array(_newest(state.pairs, CHECK_ROWS))
        calibration = self.calibrations.get(version)
        bias = abs(calibration.bias) if calibration else 0.0
        realized, estimated, allowed, state.raised = check_window(pairs[:, 0], pairs[:, 1], bias, state.raised, self.alert_z)
        return CheckResult(version, len(pairs), realized, estimated, allowed, state.raised)

    def largest_bias(self) -> float:
        """The largest |bias| any known version's calibration records (0 without one): the tolerance a
        check of rows of several versions (a segment's) starts from."""
        return max((abs(calibration.bias) for calibration in self.calibrations.values()), default=0.0)

    # -- read by the summary
    def _prediction_band(self, version: str, state: _Version, n: int) -> tuple[float | None, str | None]:
        calibration = self.calibrations.get(version)
        if calibration is not None:
            return calibration.band(n), "reference"
        if len(state.pairs) >= LIVE_MIN_ROWS:
            residuals = np.array([loss - estimate for loss, estimate in state.pairs])
            return band(float(residuals.mean()), float(residuals.std(ddof=1)), n), "joined rows"
        return None, None

    def version_summary(self, version: str) -> dict[str, Any]:
        state = self.versions[version]
        windows: dict[str, dict[str, Any]] = {}
        basis: str | None = None
        sizes = {"all": (state.predictions, state.estimate_sum / state.predictions if state.predictions else None)}
        for name, size in PREDICTION_WINDOWS.items():
            newest = _newest(state.estimates, size)
            sizes[name] = (len(newest), _mean(newest))
        for name, (n, mean) in sizes.items():
            width, basis = self._prediction_band(version, state, n) if n else (None, basis)
            windows[name] = {"predictions": n, "estimated_mae": mean, "band": width}
        checked: dict[str, dict[str, Any]] = {}
        all_band = None
        if state.joined >= 2:
            variance = max(
                0.0, state.residual_sq_sum / state.joined - ((state.loss_sum - state.joined_estimate_sum) / state.joined) ** 2
            )
            all_band = BAND_Z * math.sqrt(variance) / math.sqrt(state.joined)
        checked["all"] = {
            "rows": state.joined,
            "realized_mae": state.loss_sum / state.joined if state.joined else None,
            "estimated_mae": state.joined_estimate_sum / state.joined if state.joined else None,
            "band": all_band,
        }
        for name, size in CHECK_WINDOWS.items():
            newest = _newest(state.pairs, size)
            pairs = np.array(newest) if newest else np.zeros((0, 2))
            checked[name] = checked_rows(pairs[:, 0], pairs[:, 1])
        return {
            "windows": windows,
            "checked": checked,
            "without_estimate": state.without,
            "band_basis": basis,
            "alert_raised": state.raised,
        }

    def summary(self) -> dict[str, dict[str, Any]]:
        return {version: self.version_summary(version) for version in self.versions}
