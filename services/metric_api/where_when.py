"""Where and when the error lives: metric_api's statistics with the segments
(services/metric_api/segments.py) and the buckets by prediction time (by_time.py) beside the
global windows, and the segment alert. No I/O.

``SegmentedStats`` is the ``QualityStats`` core with both added: fed the same committed rows, the
predictions as they reach the join, and at start-up the state's rows (tags and prediction times are
in the state, not in the CSV).

The segment alert (``segment/<key>=<value>``, through metric_api's AlertBoard): raised while the
segment's ``last_100`` MAE, over at least ``min_rows`` rows, is above ``factor`` times the MAE of the
newest 1,000 rows of all segments together (the traffic as a whole now); cleared when it is back at
or below the midpoint ``(1 + factor) / 2`` times it, or when the segment stops being tracked.
Against the whole traffic's recent MAE, a model that degrades everywhere raises the global alert,
not every segment's; a segment that is most of the traffic cannot be far above it.

The segment's check of the estimate (``segment-estimate/<key>=<value>``): the check of
services/metric_api/estimate.py (realized MAE against the estimated MAE of the same ids, a window
z-test) over the segment's newest ``CHECK_ROWS`` joined rows that carried an estimate, once it has
``min_rows`` of them: raised when the model errs more in the segment than its loss model expects of
the segment's inputs (a concept shift there), cleared as the version's alert is.
"""

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.alerts import AlertBoard
from services.common.metric_rows import MetricRow
from services.common.settings import ALL_EXACT_ROWS
from services.common.snapshots import Snapshot, SnapshotUnusable
from services.metric_api.by_time import ErrorByTime
from services.metric_api.estimate import ALERT_Z, CHECK_ROWS, check_window
from services.metric_api.segments import SegmentBook, SegmentStats
from services.metric_api.stats import QualityStats

log = logging.getLogger(__name__)

SEGMENT_ALERT = "segment"
SEGMENT_ESTIMATE_ALERT = "segment-estimate"
ALERT_WINDOW_ROWS = 100
REFERENCE_ROWS = 1000


def segment_alert_name(key: str, value: str) -> str:
    return f"{SEGMENT_ALERT}/{key}={value}"


def segment_estimate_alert_name(key: str, value: str) -> str:
    return f"{SEGMENT_ESTIMATE_ALERT}/{key}={value}"


@dataclass(frozen=True)
class WhereWhenConfig:
    segment_keys: tuple[str, ...] = ()
    values_max: int = 50
    bucket_s: float = 3600.0
    buckets_kept: int = 168
    exact_rows: int = ALL_EXACT_ROWS  # every population's percentiles exact up to this many rows (segments' and buckets' fewer)


class SegmentedStats(QualityStats):
    """QualityStats, with the segments and the buckets by prediction time."""

    def __init__(self, baseline: float | None, config: WhereWhenConfig, **kwargs: Any) -> None:
        self.config = config
        super().__init__(baseline, exact_rows=config.exact_rows, **kwargs)

    def reset(self) -> None:
        super().reset()
        config = self.config
        self.segments = SegmentBook(config.segment_keys, config.values_max, self.baseline, config.exact_rows)
        self.by_time = ErrorByTime(config.bucket_s, config.buckets_kept, self.baseline, config.exact_rows)
        self.touched: list[tuple[str, str]] = []  # the segments the last batch fed
        self.where_when_loaded = False  # the segments and buckets came from a snapshot (else: from the state)

    def add_rows(self, rows: Sequence[MetricRow], now: float) -> tuple[list[float], list[float]]:
        timings = super().add_rows(rows, now)
        self.touched = self._add_to_segments(rows)
        self.by_time.add_rows(rows, now)
        return timings

    def _add_to_segments(self, rows: Sequence[MetricRow]) -> list[tuple[str, str]]:
        tagged = [row for row in rows if row.tags and math.isfinite(row.y_true - row.y_pred)]
        if not tagged or not self.segments.keys:
            return []
        y_true = np.fromiter((row.y_true for row in tagged), float, len(tagged))
        y_pred = np.fromiter((row.y_pred for row in tagged), float, len(tagged))
        estimates = np.fromiter(
            (np.nan if row.estimated_error is None else row.estimated_error for row in tagged), float, len(tagged)
        )
        return self.segments.add(tagged, y_true, y_pred, estimates)

    def add_predictions(self, made_at: Iterable[float], now: float) -> None:
        """Predictions that reached the join (held, or joined at once), by when each was made."""
        self.by_time.add_predictions(made_at, now)

    def summary(self, now: float) -> dict[str, Any]:
        summary = super().summary(now)
        return {
            **summary,
            "segments": self.segments.summary(),
            "approximate": summary["approximate"] + self.segments.approximate(),
        }

    # -- snapshots: QualityStats' and the segments and buckets
    def save(self, snapshot: Snapshot) -> None:
        super().save(snapshot)
        self.segments.save(snapshot)
        self.by_time.save(snapshot)

    def load(self, snapshot: Snapshot) -> None:
        """QualityStats' part (SnapshotUnusable if it does not fit), and the segments and buckets if
        the snapshot has them for this configuration (``where_when_loaded``); else they stay empty,
        to be rebuilt from the state's rows as without a snapshot."""
        super().load(snapshot)
        try:
            self.segments.load(snapshot)
            self.by_time.load(snapshot)
        except KeyError as exc:  # a snapshot of a release before them
            log.info("the snapshot has no %s: the segments and buckets are rebuilt from the state", exc)
            self._no_where_when()
            return
        except (SnapshotUnusable, ValueError, TypeError) as exc:
            log.warning("the snapshot's segments and buckets cannot be used (%s): rebuilt from the state", exc)
            self._no_where_when()
            return
        self.where_when_loaded = True

    def _no_where_when(self) -> None:
        config = self.config
        self.segments = SegmentBook(config.segment_keys, config.values_max, self.baseline, config.exact_rows)
        self.by_time = ErrorByTime(config.bucket_s, config.buckets_kept, self.baseline, config.exact_rows)

    def add_state_rows(self, rows: Sequence[MetricRow], now: float) -> None:
        """Rows read back from the state at start-up (already in ``all``): their segments and buckets."""
        self._add_to_segments(rows)
        self.by_time.add_history(rows, now)


class SegmentAlerts:
    """The two alerts of every tracked segment (see the module's docstring), on the board."""

    def __init__(
        self,
        board: AlertBoard,
        factor: float,
        min_rows: int,
        bias: Callable[[], float] = lambda: 0.0,
        alert_z: float = ALERT_Z,
    ) -> None:
        self.board = board
        self.factor = factor
        self.min_rows = min_rows
        self.bias = bias  # the tolerance's floor of the estimate check (the calibrations' largest |bias|)
        self.alert_z = alert_z
        self.raised: dict[str, tuple[str, str]] = {}  # alert name -> the segment (key, value), of both alerts

    def check_all(self, core: SegmentedStats, now: float) -> None:
        """Look at every segment (a core rebuilt at start-up: a segment already bad is raised at once)."""
        core.touched = [(key, value) for key, book in core.segments.by_key.items() for value in book.segments()]
        self.check(core, now)

    def check(self, core: SegmentedStats, now: float) -> None:
        """Look at the segments the last batch fed, and at those raised (a segment may have been folded away)."""
        reference = core.recent_mae(REFERENCE_ROWS)
        for key, value in dict.fromkeys([*core.touched, *self.raised.values()]):
            stats = core.segments.get(key, value)
            self._check_mae(key, value, stats, reference, now)
            self._check_estimate(key, value, stats, now)

    def _change(self, name: str, segment: tuple[str, str], raised: bool) -> bool:
        """Whether ``raised`` changes the alert ``name``'s state (and note it)."""
        if raised == (name in self.raised):
            return False
        if raised:
            self.raised[name] = segment
        else:
            del self.raised[name]
        return True

    def _check_mae(self, key: str, value: str, stats: SegmentStats | None, reference: float | None, now: float) -> None:
        name = segment_alert_name(key, value)
        mae, rows = stats.recent_mae(ALERT_WINDOW_ROWS) if stats is not None else (None, 0)
        is_raised = name in self.raised
        if mae is None or reference is None or rows < self.min_rows:
            above = False if stats is None else is_raised
        elif is_raised:
            above = mae > (1 + self.factor) / 2 * reference
        else:
            above = mae > self.factor * reference
        if not self._change(name, (key, value), above):
            return
        where = "above" if above else "back within"
        said = "no longer tracked" if stats is None else f"{mae:.4g} over its last {rows} rows"
        self.board.set(
            name,
            above,
            now,
            f"segment {key}={value}: MAE {said}, {where} {self.factor:g} x the MAE of all segments' last "
            f"{REFERENCE_ROWS} rows ({reference if reference is None else round(reference, 4)})",
            {"key": key, "value": value, "mae": mae, "rows": rows, "reference_mae": reference, "factor": self.factor},
        )

    def _check_estimate(self, key: str, value: str, stats: SegmentStats | None, now: float) -> None:
        name = segment_estimate_alert_name(key, value)
        is_raised = name in self.raised
        loss, estimate = stats.estimated(CHECK_ROWS) if stats is not None else (np.zeros(0), np.zeros(0))
        if len(loss) < max(2, self.min_rows):
            above, checked = (False if stats is None else is_raised), None
        else:
            checked = check_window(loss, estimate, self.bias(), is_raised, self.alert_z)
            above = checked[3]
        if not self._change(name, (key, value), above):
            return
        details: dict[str, Any] = {"key": key, "value": value, "rows": len(loss)}
        if checked is None:
            summary = f"segment {key}={value}: no longer tracked"
        else:
            realized, estimated, allowed, _ = checked
            details |= {"realized_mae": realized, "estimated_mae": estimated, "band": allowed}
            relation = "above" if above else "back within"
            summary = (
                f"segment {key}={value}: over its last {len(loss)} joined rows with an estimate the realized MAE "
                f"{realized:.4g} is {relation} the estimated {estimated:.4g} + {allowed:.3g}"
                + (": the model errs more here than its inputs say" if above else "")
            )
        self.board.set(name, above, now, summary, details)
