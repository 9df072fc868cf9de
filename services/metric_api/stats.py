"""metric_api's error statistics, kept up to date batch by batch. No I/O.

The windows of every row (``all``, ``last_100``, ``last_1000``, ``last_5m``) are
services/common/row_windows.py's, their numbers services/common/error_window.py's. Added here:
``all`` again per model version (running sums and |e| values, 8 bytes a row, up to ALL_EXACT_ROWS;
then a quantile sketch of 32 KiB), the newest rows
whole for /metrics/recent, and the latency and lag percentiles of the newest rows this process
joined.

A row whose numbers are not finite, or so large that their squares would overflow the sums, is
left out and counted in ``excluded_rows``. The queues refuse such values (TARGET_ABS_MAX), so they
come only from a CSV an older release wrote.
"""

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from services.common.error_window import STATS_ABS_MAX, finite_or_none, usable
from services.common.messages import UNKNOWN_VERSION
from services.common.metric_rows import MetricRow
from services.common.row_windows import LAST_5M_MAX_ROWS, ErrorHistory, RowWindows, TakenRows
from services.common.settings import ALL_EXACT_ROWS
from services.common.snapshots import Snapshot, load_history, load_windows, save_history, save_windows

RECENT_ROWS_SERVED = 1000  # the newest rows kept whole for /metrics/recent
TIMING_SAMPLES = 10_000  # latency and lag percentiles are over the newest rows joined by this process


class QualityStats(RowWindows):
    """The statistics /metrics/summary reports, fed the rows of each committed batch."""

    def __init__(
        self,
        baseline: float | None = None,
        ring_rows: int = LAST_5M_MAX_ROWS,
        timing_samples: int = TIMING_SAMPLES,
        exact_rows: int = ALL_EXACT_ROWS,
    ) -> None:
        self._timing_samples = timing_samples
        super().__init__(baseline, ring_rows, exact_rows)

    def reset(self) -> None:
        """No rows (as new; also for a read of the CSV that has to start again)."""
        super().reset()
        self.by_version: dict[str, ErrorHistory] = {}
        self.recent: deque[MetricRow] = deque(maxlen=RECENT_ROWS_SERVED)
        self.latency_s: deque[float] = deque(maxlen=self._timing_samples)
        self.lag_s: deque[float] = deque(maxlen=self._timing_samples)
        self.label_lag_s: deque[float] = deque(maxlen=self._timing_samples)

    # -- feeding
    def take(self, rows: Sequence[MetricRow], at: float = math.nan) -> TakenRows | None:
        taken = super().take(rows, at)
        if taken is not None:
            self.recent.extend(taken.rows)
        return taken

    def add_rows(self, rows: Sequence[MetricRow], now: float) -> tuple[list[float], list[float]]:
        """Rows just made durable at ``now``, each carrying its model version, ts and lag.

        Returns their end-to-end latencies and label-to-prediction lags (s), for the histograms."""
        taken = self.take(rows, now)
        if taken is None:
            return [], []
        rows = taken.rows
        versions = [row.model_version or UNKNOWN_VERSION for row in rows]
        distinct = dict.fromkeys(versions)
        if len(distinct) == 1:
            self._version(versions[0]).merge(taken.sums)
        else:
            labels = np.array(versions)
            for version in distinct:
                mine = labels == version
                self._version(version).add(taken.y_true[mine], taken.y_pred[mine])
        latencies = [now - row.ts for row in rows if row.ts is not None]
        lags = [row.lag_s for row in rows if row.lag_s is not None]
        self.latency_s.extend(latencies)
        self.lag_s.extend(lags)
        self.label_lag_s.extend(row.label_lag_s for row in rows if row.label_lag_s is not None)
        self.last_row_at = now
        return latencies, lags

    def add_version_rows(self, version: str, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        """Rows of one model version already counted in ``all`` (read back at start-up)."""
        kept = (np.abs(y_true) <= STATS_ABS_MAX) & (np.abs(y_pred) <= STATS_ABS_MAX)
        if not kept.all():
            y_true, y_pred = y_true[kept], y_pred[kept]
        if len(y_true):
            self._version(version).add(y_true, y_pred)

    def add_rows_of_versions(self, rows: Sequence[MetricRow], versions_of: Callable[[Sequence[str]], list[str]]) -> None:
        """Rows already counted in ``all`` (read back past a snapshot), into their model versions' ``versions_of``."""
        kept = [row for row in rows if usable(row.y_true, row.y_pred)]
        if not kept:
            return
        labels = np.array(versions_of([row.id for row in kept]))
        y_true = np.fromiter((row.y_true for row in kept), float, len(kept))
        y_pred = np.fromiter((row.y_pred for row in kept), float, len(kept))
        for version in dict.fromkeys(labels.tolist()):
            mine = labels == version
            self._version(version).add(y_true[mine], y_pred[mine])

    def _version(self, version: str) -> ErrorHistory:
        history = self.by_version.get(version)
        if history is None:
            history = self.by_version[version] = ErrorHistory(self.baseline, self.exact_rows)
        return history

    # -- snapshots (services/common/snapshots.py): everything but the timings of this process
    def save(self, snapshot: Snapshot) -> None:
        save_windows(self, snapshot)
        snapshot.meta["versions"] = list(self.by_version)
        for number, history in enumerate(self.by_version.values()):
            save_history(history, f"version{number}", snapshot)
        snapshot.meta["recent_ids"] = [row.id for row in self.recent]
        snapshot.arrays["recent"] = np.array([(row.y_true, row.y_pred) for row in self.recent], dtype=float).reshape(-1, 2)

    def load(self, snapshot: Snapshot) -> None:
        """Into a fresh core, what ``save`` saved (SnapshotUnusable if it does not fit)."""
        load_windows(self, snapshot)
        for number, version in enumerate(snapshot.meta["versions"]):
            self.by_version[version] = load_history(self.baseline, f"version{number}", snapshot, self.exact_rows)
        for sample_id, (y_true, y_pred) in zip(snapshot.meta["recent_ids"], snapshot.arrays["recent"], strict=True):
            self.recent.append(MetricRow.of(sample_id, float(y_true), float(y_pred)))

    # -- reading
    def last(self, limit: int) -> list[MetricRow]:
        """The newest ``limit`` rows, oldest first."""
        if limit <= 0:
            return []
        return list(self.recent)[-limit:]

    def summary(self, now: float) -> dict[str, Any]:
        """Everything this core knows, JSON-ready (no NaN: null instead)."""
        windows = super().summary(now)
        sketched = [f"by_model_version.{version}" for version, history in self.by_version.items() if history.approximate]
        return {
            **windows,
            "approximate": windows["approximate"] + sketched,
            "by_model_version": {version: history.window() for version, history in self.by_version.items()},
            "latency": _p50_p99(self.latency_s),
            "lag": _p50_p99(self.lag_s),
            "label_lag": _p50_p99(self.label_lag_s),
        }


def _p50_p99(samples: deque[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_s": None, "p99_s": None}
    p50, p99 = np.percentile(np.fromiter(samples, float, len(samples)), [50, 99])
    return {"p50_s": finite_or_none(p50), "p99_s": finite_or_none(p99)}
