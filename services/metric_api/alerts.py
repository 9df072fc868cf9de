"""The MAE alert's two rules (no I/O), ``MAE_DETECTOR`` says which: ``cusum`` (the default,
``CusumMaeAlert``: a sequential change detector calibrated from the model's reference errors,
services/metric_api/cusum.py) or ``threshold`` (``MaeAlert``: the ``last_100`` MAE above ``MAE_ALERT``).
Each change goes onto metric_api's alert board (services/common/alerts.py) as the alert ``mae``.
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from services.common.error_window import finite_or_none
from services.common.metric_rows import MetricRow
from services.common.row_windows import LAST_N_WINDOWS
from services.metric_api.cusum import Calibration, Cusum

ALERT_WINDOW = "last_100"
ALERT_ROWS = LAST_N_WINDOWS[ALERT_WINDOW]


@dataclass(frozen=True)
class AlertChange:
    state: Literal["raised", "cleared"]
    window: str
    mae: float | None
    threshold: float
    at: float

    def payload(self, service: str) -> dict[str, Any]:
        return {"alert": self.state, "service": service, **{k: v for k, v in asdict(self).items() if k != "state"}}


class MaeAlert:
    """Raised when the window's MAE goes above the threshold, cleared when it is back at or below."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.mae: float | None = None
        self.since: float | None = None

    @property
    def raised(self) -> bool:
        return self.since is not None

    def check(self, mae: float | None, now: float) -> AlertChange | None:
        """Take the current MAE (None: no rows yet); return the change, if this is one."""
        above = mae is not None and mae > self.threshold
        self.mae = finite_or_none(mae)  # reported as JSON
        if above == self.raised:
            return None
        self.since = now if above else None
        return AlertChange("raised" if above else "cleared", ALERT_WINDOW, self.mae, self.threshold, now)

    def state(self) -> dict[str, Any] | None:
        """The summary's ``alert``: null while not raised."""
        if self.since is None:
            return None
        return {"window": ALERT_WINDOW, "mae": self.mae, "threshold": self.threshold, "since": self.since}


# A change of the MAE alert, as the board takes it: raised or not, its summary, its details.
Decision = tuple[bool, str, dict[str, Any]]


def threshold_decision(change: AlertChange) -> Decision:
    mae = "not finite" if change.mae is None else f"{change.mae:.4g}"
    where = "above" if change.state == "raised" else "back within"
    summary = f"the {change.window} MAE is {mae}, {where} MAE_ALERT={change.threshold:g}"
    return change.state == "raised", summary, {"window": change.window, "mae": change.mae, "threshold": change.threshold}


class CusumMaeAlert:
    """The CUSUM over the absolute errors of the rows of ``model_version`` (None: of every row), in the
    order they are written; its changes, with the row of the stream at which each came."""

    WINDOW = "recent_rows"  # the summary's alert.window: the rows since the statistic last left 0

    def __init__(self, calibration: Calibration, model_version: str | None = None) -> None:
        self.calibration = calibration
        self.model_version = model_version
        self.detector = Cusum(calibration)
        self.mae: float | None = None
        self.since: float | None = None

    def reset(self) -> None:
        self.detector = Cusum(self.calibration)
        self.mae = self.since = None

    def take(self, rows: Sequence[MetricRow], now: float) -> list[Decision]:
        """The rows of one batch, in order; every change they made, in order (a raise and its clear
        within one batch are both told: each is a decision a person would want to know of)."""
        version = self.model_version
        errors = [row.absolute_error for row in rows if version is None or row.model_version in (None, version)]
        decisions = []
        c = self.calibration
        for verdict in self.detector.add(errors):
            self.mae = finite_or_none(verdict.mae)
            self.since = now if verdict.raised else None
            level = "not known" if self.mae is None else f"{self.mae:.4g}"
            if verdict.raised:
                summary = f"the MAE rose: about {level} over the recent rows against {c.mean:.4g} on the reference (CUSUM)"
            else:
                summary = f"the MAE is back near the reference's {c.mean:.4g} (about {level} over the recent rows; CUSUM)"
            details = {"detector": "cusum", "row": verdict.row, "mae": self.mae, "reference_mae": c.mean, "h": c.h, "k": c.k}
            decisions.append((verdict.raised, summary, details))
        return decisions

    @property
    def statistic(self) -> float:
        return self.detector.statistic

    def state(self) -> dict[str, Any] | None:
        """The summary's ``alert``: null while not raised; ``threshold`` is the reference's MAE."""
        if self.since is None:
            return None
        mae = self.mae if self.mae is not None and math.isfinite(self.mae) else None
        return {"window": self.WINDOW, "mae": mae, "threshold": self.calibration.mean, "since": self.since}
