"""The drift alert: raised while any column drifted. No I/O: model_api's drift watch puts each
change on its alert board (services/common/alerts.py, the alert ``drift``)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class DriftChange:
    """The drift alert raised (some columns drifted) or cleared (none any more)."""

    state: Literal["raised", "cleared"]
    drifted: tuple[str, ...]
    window_count: int
    rule: str
    at: float


class DriftAlert:
    """Raised while any column of a judged window drifted; a window not judged changes nothing."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.drifted: tuple[str, ...] = ()

    def check(self, report: Mapping[str, Any], now: float) -> DriftChange | None:
        if report["status"] not in ("calm", "drifted"):
            return None
        drifted: Sequence[str] = report["drifted"]
        raised = self.since is not None
        self.drifted = tuple(drifted)
        if bool(drifted) == raised:
            return None
        self.since = now if drifted else None
        return DriftChange(
            "raised" if drifted else "cleared", self.drifted, report["window"]["count"], report["rule"]["text"], now
        )
