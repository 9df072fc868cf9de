"""The MAE alert: raised while the ``last_100`` MAE is above ``MAE_ALERT``.

``MaeAlert`` is the state (no I/O); services/common/webhook.py's ``WebhookNotifier`` POSTs
each change of it to ``ALERT_WEBHOOK_URL``.
"""

from dataclasses import asdict, dataclass
from typing import Any, Literal

from services.common.error_window import finite_or_none
from services.common.row_windows import LAST_N_WINDOWS

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
