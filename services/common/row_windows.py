"""The windows of a stream of metric rows, kept up to date batch by batch. No I/O.

``all`` (every row taken), ``last_100``, ``last_1000`` and ``last_5m`` (rows joined in the last
five minutes, at most ``LAST_5M_MAX_ROWS`` of them), each ``WindowStats``' twelve numbers
(services/common/error_window.py):

- ``all``: running sums, and a compact float64 array of absolute errors for the percentiles and
  the maximum (8 bytes a row), kept sorted lazily (rows since the last read are sorted and
  merged in when asked); beyond ``exact_rows`` rows (ALL_EXACT_ROWS) a quantile sketch of 32 KiB
  instead (services/common/quantile_sketch.py): the percentiles within 0.5 %, the maximum exact.
- ``last_*``: a ring of the newest rows (y_true, y_pred, joined-at time), computed from directly
  when asked: at most ``LAST_5M_MAX_ROWS`` rows.

metric_api's statistics build on ``RowWindows`` (services/metric_api/stats.py); plot_api keeps one
over the union of the shards' rows (services/plot_api/shards.py).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.error_window import (
    PERCENTILES,
    BatchSums,
    ErrorSums,
    Window,
    batch_of,
    finite_or_none,
    usable,
    window_of,
)
from services.common.metric_rows import MetricRow
from services.common.quantile_sketch import QuantileSketch
from services.common.settings import ALL_EXACT_ROWS

LAST_N_WINDOWS = {"last_100": 100, "last_1000": 1000}
LAST_5M_S = 300.0
# 5 minutes at 1,000 rows/s: 7.2 MB of ring. Beyond that rate last_5m is the newest rows only.
LAST_5M_MAX_ROWS = 300_000
RATE_WINDOW_S = 60.0  # rows_per_s is over the last minute
# A population that is one of many (a segment: up to SEGMENT_VALUES_MAX + 1 a key; a time bucket: up to
# TIME_BUCKETS_KEPT) is exact up to at most this many rows: 0.8 MB each (1 MiB of capacity), not 8.
PART_EXACT_ROWS = 100_000
SEED_CHUNK = 65_536  # exact values given to a new sketch this many at a time


class GrowingArray:
    """float64 values appended in batches; capacity doubles, so appends are amortised O(1)."""

    def __init__(self, capacity: int = 1024) -> None:
        self._data = np.empty(capacity)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self._data):
            grown = np.empty(max(end, 2 * len(self._data)))
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : end] = values
        self.size = end

    @property
    def values(self) -> np.ndarray:
        return self._data[: self.size]

    @property
    def capacity_nbytes(self) -> int:
        return int(self._data.nbytes)


class LazilySortedArray(GrowingArray):
    """Values whose order does not matter, sorted when read: only the ones added since the
    last read are sorted, then merged in (O(n) instead of a full sort or partition)."""

    def __init__(self) -> None:
        super().__init__()
        self._sorted = 0

    def sorted(self) -> np.ndarray:
        values = self.values
        if self._sorted < self.size:
            head, tail = values[: self._sorted], np.sort(values[self._sorted :])
            values[:] = np.insert(head, np.searchsorted(head, tail), tail)
            self._sorted = self.size
        return values


class ErrorHistory:
    """Every row of one population (all rows, one model version's, one segment's): sums and the |e|
    values, exactly while there are at most ``exact_rows`` of them (8 bytes a row); beyond that a
    ``QuantileSketch`` of them (32 KiB, percentiles within ``RELATIVE_ACCURACY``), seeded with the exact
    values, which are then freed. The maximum stays exact."""

    def __init__(self, baseline: float | None, exact_rows: int = ALL_EXACT_ROWS) -> None:
        self.sums = ErrorSums(baseline)
        self.exact_rows = exact_rows
        self.absolute_errors: LazilySortedArray | None = LazilySortedArray()  # None once sketched
        self.sketch: QuantileSketch | None = None
        self._cached: tuple[int, Window] | None = None

    @property
    def count(self) -> int:
        return self.sums.count

    @property
    def approximate(self) -> bool:
        """Whether the percentiles are the sketch's (within ``RELATIVE_ACCURACY``), not exact."""
        return self.sketch is not None

    def nbytes(self) -> int:
        """The bytes of its arrays (the |e| values held, or the sketch's counters)."""
        return self.sketch.nbytes if self.sketch is not None else int(self.exact().capacity_nbytes)

    def exact(self) -> LazilySortedArray:
        """The |e| values (only while not sketched)."""
        assert self.absolute_errors is not None, "a sketched population has no exact values"
        return self.absolute_errors

    def add(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        self.merge(BatchSums(y_true, y_pred, self.sums.baseline))

    def merge(self, batch: BatchSums) -> None:
        self.sums.merge(batch)
        self.add_errors(batch.absolute_errors)

    def absorb(self, other: "ErrorHistory") -> None:
        """Add ``other``'s rows (its sums, and its |e| values or sketch)."""
        if other.sketch is None:
            self.merge(batch_of(other.sums, other.exact().values.copy()))
            return
        self.sums.merge(batch_of(other.sums, np.empty(0)))
        self._sketched().merge(other.sketch)

    def add_errors(self, absolute_errors: np.ndarray) -> None:
        """The |e| of rows whose sums are in already (a snapshot's)."""
        if self.sketch is not None:
            self.sketch.add(absolute_errors)
            return
        values = self.exact()
        values.extend(absolute_errors)
        if values.size > self.exact_rows:
            self._sketched()

    def _sketched(self) -> QuantileSketch:
        """The sketch, made now of the exact values (then freed) if there is none yet."""
        if self.sketch is None:
            self.sketch = QuantileSketch()
            values = self.exact().values
            for start in range(0, len(values), SEED_CHUNK):  # the sketch's temporaries stay small
                self.sketch.add(values[start : start + SEED_CHUNK])
            self.absolute_errors = None
        return self.sketch

    def window(self) -> Window:
        if self._cached is None or self._cached[0] != self.count:
            if self.sketch is None:
                window = self.sums.window(self.exact().sorted(), ascending=True)
            elif self.count == 0:
                window = self.sums.window(np.empty(0), ascending=True)
            else:
                window = self.sums.window_of_percentiles(self.sketch.percentiles(PERCENTILES), self.sketch.max)
            self._cached = (self.count, window)
        return self._cached[1]


class RowRing:
    """The newest ``capacity`` rows: y_true, y_pred and the time each was joined (NaN: unknown)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.y_true = np.empty(capacity)
        self.y_pred = np.empty(capacity)
        self.at = np.empty(capacity)
        self.total = 0  # rows ever added

    def __len__(self) -> int:
        return min(self.total, self.capacity)

    def extend(self, y_true: np.ndarray, y_pred: np.ndarray, at: np.ndarray) -> None:
        skipped = len(y_true) - self.capacity
        if skipped > 0:  # only the newest fit
            y_true, y_pred, at = y_true[skipped:], y_pred[skipped:], at[skipped:]
            self.total += skipped
        positions = (self.total + np.arange(len(y_true))) % self.capacity
        self.y_true[positions] = y_true
        self.y_pred[positions] = y_pred
        self.at[positions] = at
        self.total += len(y_true)

    def _positions(self, k: int) -> np.ndarray:
        """Positions of the newest ``k`` rows, oldest first."""
        k = min(k, len(self))
        return (self.total - k + np.arange(k)) % self.capacity

    def last(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """y_true, y_pred and joined-at of the newest ``k`` rows, oldest first (views when
        they do not wrap around: read them before adding rows)."""
        k = min(k, len(self))
        end = self.total % self.capacity
        start = end - k
        if start >= 0:
            return self.y_true[start:end], self.y_pred[start:end], self.at[start:end]
        y_true, y_pred, at = (np.concatenate((column[start:], column[:end])) for column in (self.y_true, self.y_pred, self.at))
        return y_true, y_pred, at

    def set_times_of_last(self, at: np.ndarray) -> None:
        """Set the joined-at times of the newest rows, oldest first: the newest ``len(at)`` of them
        (the newest times only, when ``at`` has more than the ring holds)."""
        k = min(len(at), len(self))
        self.at[self._positions(k)] = at[len(at) - k :]


@dataclass(frozen=True)
class TakenRows:
    """The rows of one batch the windows took (the usable ones), as columns and sums."""

    rows: Sequence[MetricRow]
    y_true: np.ndarray
    y_pred: np.ndarray
    sums: BatchSums


class RowWindows:
    """``all`` and the ``last_*`` windows of the rows taken so far, the rows left out, the newest row."""

    def __init__(
        self, baseline: float | None = None, ring_rows: int = LAST_5M_MAX_ROWS, exact_rows: int = ALL_EXACT_ROWS
    ) -> None:
        self.baseline = baseline
        self._ring_rows = ring_rows
        self.exact_rows = exact_rows
        self.reset()

    def reset(self) -> None:
        """No rows (as new; also for a read that has to start again)."""
        self.all = ErrorHistory(self.baseline, self.exact_rows)
        self.ring = RowRing(self._ring_rows)
        self.last_id: str | None = None
        self.last_row_at: float | None = None
        self.excluded_rows = 0  # rows left out: not finite, or beyond STATS_ABS_MAX

    @property
    def count(self) -> int:
        return self.all.count

    def take(self, rows: Sequence[MetricRow], at: float = math.nan) -> TakenRows | None:
        """Rows in the order they were joined, all at ``at`` (NaN: not known); those whose numbers
        the statistics cannot take are counted in ``excluded_rows``. None when none was taken."""
        kept = rows if all(usable(row.y_true, row.y_pred) for row in rows) else [r for r in rows if usable(r.y_true, r.y_pred)]
        self.excluded_rows += len(rows) - len(kept)
        if not kept:
            return None
        y_true = np.fromiter((row.y_true for row in kept), float, len(kept))
        y_pred = np.fromiter((row.y_pred for row in kept), float, len(kept))
        taken = TakenRows(kept, y_true, y_pred, BatchSums(y_true, y_pred, self.baseline))
        self.all.merge(taken.sums)
        self.ring.extend(y_true, y_pred, np.full(len(kept), at))
        self.last_id = kept[-1].id
        return taken

    def add_history(self, rows: Sequence[MetricRow]) -> None:
        """Rows read back (a CSV, in order), when each was joined not known (``set_times_of_last``)."""
        self.take(rows)

    def set_times_of_last(self, at: Sequence[float | None]) -> None:
        """When the newest ``len(at)`` rows were joined, oldest first (None: not known)."""
        times = np.array([np.nan if t is None else t for t in at], dtype=float)
        self.ring.set_times_of_last(times)
        if len(times) and len(self.ring):
            self.last_row_at = finite_or_none(times[-1])

    @property
    def mae(self) -> float | None:
        return self.all.sums.sum_ae.value / self.count if self.count else None

    @np.errstate(over="ignore", invalid="ignore")
    def recent_mae(self, rows: int) -> float | None:
        """MAE of the newest ``rows`` rows (cheap: for checking an alert every batch)."""
        y_true, y_pred, _at = self.ring.last(rows)
        return float(np.mean(np.abs(y_pred - y_true))) if len(y_true) else None

    def summary(self, now: float) -> dict[str, Any]:
        """The windows (as ``Windows``), the newest row, the rate and the rows left out (no NaN: null instead)."""
        windows = {"all": self.all.window()}
        for name, size in LAST_N_WINDOWS.items():
            y_true, y_pred, _at = self.ring.last(size)
            windows[name] = window_of(y_true, y_pred, self.baseline)
        y_true, y_pred, at = self.ring.last(self.ring.capacity)  # once: a copy when the ring has wrapped
        within = at >= now - LAST_5M_S  # NaN (time unknown) is never within
        windows["last_5m"] = window_of(y_true[within], y_pred[within], self.baseline)
        return {
            "windows": windows,
            "last_id": self.last_id,
            "last_row_at": self.last_row_at,
            "rows_per_s": int(np.count_nonzero(at >= now - RATE_WINDOW_S)) / RATE_WINDOW_S,
            "excluded_rows": self.excluded_rows,
            "approximate": ["windows.all"] if self.all.approximate else [],  # whose percentiles are the sketch's
        }
