"""The estimated and realized MAE over time (issue 24), as plot_api samples metric_api's summary at
each refresh, for the dashboard's estimate chart. No I/O.

A point per refresh whose summary moved (more predictions or more joined rows of the model
version): the estimated MAE of the last 300 predictions (labelled or not) and its band, and of
the last 300 joined rows that had an estimate, their realized MAE beside the estimated MAE of the
same ids. The chart follows the version that moved last. Bounded: the newest ``POINTS_MAX`` points
of each version (of the ``VERSIONS_MAX`` versions seen last).
"""

from collections import deque
from dataclasses import dataclass, field

from services.common.contracts.summary import EstimateSummary

POINTS_MAX = 720  # an hour at PLOT_INTERVAL_S=5, two at its default of 10
VERSIONS_MAX = 5
PREDICTIONS_WINDOW = "last_300"
CHECKED_WINDOW = "last_300"


@dataclass(frozen=True)
class EstimatePoint:
    at: float
    estimated: float | None  # the estimated MAE of the last 300 predictions
    band: float | None
    realized: float | None  # the realized MAE of the last 300 joined rows with an estimate
    estimated_joined: float | None  # the estimated MAE of those same rows


@dataclass
class _Track:
    points: deque[EstimatePoint] = field(default_factory=lambda: deque(maxlen=POINTS_MAX))
    key: tuple[int, int] = (-1, -1)


class EstimateHistory:
    def __init__(self) -> None:
        self.tracks: dict[str, _Track] = {}
        self.latest: str | None = None  # the version that moved last
        self.version = 0  # moves with every point added: the chart is drawn again then

    def add(self, at: float, estimate: EstimateSummary | None) -> bool:
        """Sample the summary's estimate at ``at``; whether a point was added."""
        if estimate is None:
            return False
        added = False
        for name, state in estimate.by_model_version.items():
            window, checked = state.windows.get(PREDICTIONS_WINDOW), state.checked.get(CHECKED_WINDOW)
            total, joined = state.windows.get("all"), state.checked.get("all")
            key = (total.predictions if total else 0, joined.rows if joined else 0)
            track = self.tracks.get(name)
            if track is not None and track.key == key:
                continue
            if track is None:
                track = self.tracks[name] = _Track()
            track.key = key
            track.points.append(
                EstimatePoint(
                    at,
                    window.estimated_mae if window else None,
                    window.band if window else None,
                    checked.realized_mae if checked else None,
                    checked.estimated_mae if checked else None,
                )
            )
            self.tracks[name] = self.tracks.pop(name)  # the newest last
            self.latest, added = name, True
        while len(self.tracks) > VERSIONS_MAX:
            del self.tracks[next(iter(self.tracks))]
        if added:
            self.version += 1
        return added

    def points(self) -> tuple[str | None, list[EstimatePoint]]:
        """The version the chart follows and its points, oldest first."""
        if self.latest is None or self.latest not in self.tracks:
            return None, []
        return self.latest, list(self.tracks[self.latest].points)
