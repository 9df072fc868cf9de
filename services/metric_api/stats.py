"""Error statistics over the metric rows, kept up to date batch by batch. No I/O.

A *window* is a set of rows and the same twelve numbers about it (``WINDOW_FIELDS``):
``all`` (every row since the CSV began), ``last_100``, ``last_1000``, ``last_5m`` (rows
joined in the last five minutes, at most ``LAST_5M_MAX_ROWS`` of them), and ``all`` again
per model version. Errors are signed as ``e = y_pred - y_true`` (so ``me`` is the bias).

- ``all`` and each model version: running sums, merged batch by batch with compensated
  (Neumaier) addition, and the mean and sum of squared deviations of ``y_true`` merged with
  Chan's formula, so r2 does not suffer the cancellation of ``Σy² - n·ȳ²``. Percentiles and
  the maximum need every error: a compact float64 array of absolute errors (8 bytes a row),
  kept sorted lazily (rows since the last read are sorted and merged in when asked).
- ``last_*``: a ring of the newest rows (y_true, y_pred, joined-at time), computed from
  directly when asked: at most ``LAST_5M_MAX_ROWS`` rows.
- Percentiles interpolate linearly, as numpy's and pandas' defaults do.
"""

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common.messages import UNKNOWN_VERSION
from services.common.metric_rows import MetricRow

WINDOW_FIELDS = (
    "count", "mae", "rmse", "me", "mape", "r2", "max_ae", "p50_ae", "p90_ae", "p95_ae", "baseline_mae", "skill",
)  # fmt: skip
RECENT_ROWS_SERVED = 1000  # the newest rows kept whole for /metrics/recent
LAST_N_WINDOWS = {"last_100": 100, "last_1000": 1000}
LAST_5M_S = 300.0
# 5 minutes at 1,000 rows/s: 7.2 MB of ring. Beyond that rate last_5m is the newest rows only.
LAST_5M_MAX_ROWS = 300_000
RATE_WINDOW_S = 60.0  # rows_per_s is over the last minute
TIMING_SAMPLES = 10_000  # latency and lag percentiles are over the newest rows joined by this process

Window = dict[str, float | int | None]


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such a value is reported as null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def empty_window() -> Window:
    return {name: (0 if name == "count" else None) for name in WINDOW_FIELDS}


class CompensatedSum:
    """A running sum with Neumaier's compensation: as exact as one rounding at the end."""

    __slots__ = ("_sum", "_compensation")

    def __init__(self) -> None:
        self._sum = 0.0
        self._compensation = 0.0

    def add(self, value: float) -> None:
        total = self._sum + value
        if abs(self._sum) >= abs(value):
            self._compensation += (self._sum - total) + value
        else:
            self._compensation += (value - total) + self._sum
        self._sum = total

    @property
    def value(self) -> float:
        return self._sum + self._compensation


class BatchSums:
    """The sums of one batch of rows, computed once and merged into every window it belongs to."""

    __slots__ = ("count", "sum_e", "sum_e2", "sum_ae", "sum_ape", "count_ape",
                 "sum_baseline_ae", "mean_y", "m2_y", "absolute_errors")  # fmt: skip

    @np.errstate(over="ignore", invalid="ignore")  # absurd values overflow to inf: reported as null
    def __init__(self, y_true: np.ndarray, y_pred: np.ndarray, baseline: float | None) -> None:
        k = self.count = len(y_true)
        e = y_pred - y_true
        ae: np.ndarray = np.abs(e)
        self.absolute_errors = ae
        self.sum_e = float(e.sum())
        self.sum_e2 = float((e * e).sum())
        self.sum_ae = float(ae.sum())
        nonzero = y_true != 0
        self.sum_ape = float(np.divide(ae, np.abs(y_true), out=np.zeros(k), where=nonzero).sum())
        self.count_ape = int(np.count_nonzero(nonzero))
        self.sum_baseline_ae = float(np.abs(y_true - baseline).sum()) if baseline is not None else 0.0
        # Two passes within the batch; ErrorSums merges batches with Chan's formula.
        self.mean_y = float(y_true.sum()) / k if k else 0.0
        deviation = y_true - self.mean_y
        self.m2_y = float((deviation * deviation).sum())


class ErrorSums:
    """What a window's numbers are made of, merged one batch of rows at a time."""

    def __init__(self, baseline: float | None) -> None:
        self.baseline = baseline
        self.count = 0
        self.sum_e = CompensatedSum()
        self.sum_e2 = CompensatedSum()
        self.sum_ae = CompensatedSum()
        self.sum_ape = CompensatedSum()  # |e| / |y_true| over rows with y_true != 0
        self.count_ape = 0
        self.sum_baseline_ae = CompensatedSum()
        self.mean_y = 0.0
        self.m2_y = 0.0  # Σ (y_true - mean)²

    def add(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """Merge rows in; return their absolute errors."""
        batch = BatchSums(y_true, y_pred, self.baseline)
        self.merge(batch)
        return batch.absolute_errors

    def merge(self, batch: BatchSums) -> None:
        k = batch.count
        if k == 0:
            return
        self.sum_e.add(batch.sum_e)
        self.sum_e2.add(batch.sum_e2)
        self.sum_ae.add(batch.sum_ae)
        self.sum_ape.add(batch.sum_ape)
        self.count_ape += batch.count_ape
        self.sum_baseline_ae.add(batch.sum_baseline_ae)
        # Chan et al.: the merged mean and squared deviations, without Σy² − n·ȳ².
        n = self.count
        total = n + k
        delta = batch.mean_y - self.mean_y
        self.mean_y += delta * k / total
        self.m2_y += batch.m2_y + delta * delta * n * k / total
        self.count = total

    @np.errstate(over="ignore", invalid="ignore")
    def window(self, absolute_errors: np.ndarray, *, ascending: bool) -> Window:
        """The window's numbers; ``absolute_errors`` are those of the same rows (``ascending``:
        already sorted, so percentiles are read off rather than searched for)."""
        n = self.count
        if n == 0:
            return empty_window()
        mae = self.sum_ae.value / n
        sum_e2 = self.sum_e2.value
        baseline_mae = self.sum_baseline_ae.value / n if self.baseline is not None else None
        if ascending:
            p50, p90, p95 = (percentile_of_sorted(absolute_errors, q) for q in (50, 90, 95))
            max_ae = absolute_errors[-1]
        else:
            p50, p90, p95 = np.percentile(absolute_errors, [50, 90, 95])
            max_ae = np.max(absolute_errors)
        window: Window = {
            "count": n,
            "mae": mae,
            "rmse": math.sqrt(sum_e2 / n),
            "me": self.sum_e.value / n,
            "mape": self.sum_ape.value / self.count_ape if self.count_ape else None,
            "r2": 1.0 - sum_e2 / self.m2_y if n >= 2 and self.m2_y > 0 else None,
            "max_ae": float(max_ae),
            "p50_ae": float(p50),
            "p90_ae": float(p90),
            "p95_ae": float(p95),
            "baseline_mae": baseline_mae,
            "skill": 1.0 - mae / baseline_mae if baseline_mae else None,
        }
        return {name: value if name == "count" else finite_or_none(value) for name, value in window.items()}


def window_of(y_true: np.ndarray, y_pred: np.ndarray, baseline: float | None) -> Window:
    """A window's numbers straight from its rows."""
    sums = ErrorSums(baseline)
    return sums.window(sums.add(y_true, y_pred), ascending=False)


def percentile_of_sorted(values: np.ndarray, q: float) -> float:
    """numpy's default ("linear") percentile of ascending ``values``, without re-sorting them:
    the same virtual index and the same interpolation, so the same float."""
    n = len(values)
    index = (q / 100) * (n - 1)
    below = math.floor(index)
    above = min(below + 1, n - 1)
    t = index - below
    a, b = float(values[below]), float(values[above])
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


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
    """Every row of one population (all rows, or one model version's): sums and |e| values."""

    def __init__(self, baseline: float | None) -> None:
        self.sums = ErrorSums(baseline)
        self.absolute_errors = LazilySortedArray()
        self._cached: tuple[int, Window] | None = None

    @property
    def count(self) -> int:
        return self.sums.count

    def add(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        self.merge(BatchSums(y_true, y_pred, self.sums.baseline))

    def merge(self, batch: BatchSums) -> None:
        self.sums.merge(batch)
        self.absolute_errors.extend(batch.absolute_errors)

    def window(self) -> Window:
        if self._cached is None or self._cached[0] != self.count:
            self._cached = (self.count, self.sums.window(self.absolute_errors.sorted(), ascending=True))
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
        """Set the joined-at times of the newest ``len(at)`` rows (oldest first)."""
        self.at[self._positions(len(at))] = at[-len(self) :] if len(at) > len(self) else at


class QualityStats:
    """The statistics /metrics/summary reports, fed the rows of each committed batch."""

    def __init__(
        self,
        baseline: float | None = None,
        ring_rows: int = LAST_5M_MAX_ROWS,
        timing_samples: int = TIMING_SAMPLES,
    ) -> None:
        self.baseline = baseline
        self.all = ErrorHistory(baseline)
        self.by_version: dict[str, ErrorHistory] = {}
        self.ring = RowRing(ring_rows)
        self.recent: deque[MetricRow] = deque(maxlen=RECENT_ROWS_SERVED)
        self.latency_s: deque[float] = deque(maxlen=timing_samples)
        self.lag_s: deque[float] = deque(maxlen=timing_samples)
        self.label_lag_s: deque[float] = deque(maxlen=timing_samples)
        self.last_id: str | None = None
        self.last_row_at: float | None = None

    @property
    def count(self) -> int:
        return self.all.count

    # -- feeding
    def add_rows(self, rows: Sequence[MetricRow], now: float) -> tuple[list[float], list[float]]:
        """Rows just made durable at ``now``, each carrying its model version, ts and lag.

        Returns their end-to-end latencies and label-to-prediction lags (s), for the histograms."""
        if not rows:
            return [], []
        y_true, y_pred = _columns(rows)
        batch = BatchSums(y_true, y_pred, self.baseline)
        self._add_to_all(rows, batch, y_true, y_pred, np.full(len(rows), now))
        versions = [row.model_version or UNKNOWN_VERSION for row in rows]
        distinct = dict.fromkeys(versions)
        if len(distinct) == 1:
            self._version(versions[0]).merge(batch)
        else:
            labels = np.array(versions)
            for version in distinct:
                mine = labels == version
                self._version(version).add(y_true[mine], y_pred[mine])
        latencies = [now - row.ts for row in rows if row.ts is not None]
        lags = [row.lag_s for row in rows if row.lag_s is not None]
        self.latency_s.extend(latencies)
        self.lag_s.extend(lags)
        self.label_lag_s.extend(row.label_lag_s for row in rows if row.label_lag_s is not None)
        self.last_row_at = now
        return latencies, lags

    def add_history(self, rows: Sequence[MetricRow]) -> None:
        """Rows read back at start-up (the CSV, in order): their versions and times come
        separately (``add_version_rows``, ``set_times_of_last``)."""
        if rows:
            y_true, y_pred = _columns(rows)
            self._add_to_all(rows, BatchSums(y_true, y_pred, self.baseline), y_true, y_pred, np.full(len(rows), np.nan))

    def add_version_rows(self, version: str, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        """Rows of one model version already counted in ``all`` (read back at start-up)."""
        self._version(version).add(y_true, y_pred)

    def set_times_of_last(self, at: Sequence[float | None]) -> None:
        """When the newest ``len(at)`` rows were joined, oldest first (None: not known)."""
        times = np.array([np.nan if t is None else t for t in at], dtype=float)
        self.ring.set_times_of_last(times)
        if len(times) and len(self.ring):
            self.last_row_at = finite_or_none(times[-1])

    def _add_to_all(
        self, rows: Sequence[MetricRow], batch: BatchSums, y_true: np.ndarray, y_pred: np.ndarray, at: np.ndarray
    ) -> None:
        self.all.merge(batch)
        self.ring.extend(y_true, y_pred, at)
        self.recent.extend(rows)
        self.last_id = rows[-1].id

    def _version(self, version: str) -> ErrorHistory:
        history = self.by_version.get(version)
        if history is None:
            history = self.by_version[version] = ErrorHistory(self.baseline)
        return history

    # -- reading
    @property
    def mae(self) -> float | None:
        return self.all.sums.sum_ae.value / self.count if self.count else None

    @np.errstate(over="ignore", invalid="ignore")
    def recent_mae(self, rows: int) -> float | None:
        """MAE of the newest ``rows`` rows (cheap: for checking an alert every batch)."""
        y_true, y_pred, _at = self.ring.last(rows)
        return float(np.mean(np.abs(y_pred - y_true))) if len(y_true) else None

    def last(self, limit: int) -> list[MetricRow]:
        """The newest ``limit`` rows, oldest first."""
        if limit <= 0:
            return []
        return list(self.recent)[-limit:]

    def summary(self, now: float) -> dict[str, Any]:
        """Everything this core knows, JSON-ready (no NaN: null instead)."""
        windows = {"all": self.all.window()}
        for name, size in LAST_N_WINDOWS.items():
            y_true, y_pred, _at = self.ring.last(size)
            windows[name] = window_of(y_true, y_pred, self.baseline)
        y_true, y_pred, at = self.ring.last(self.ring.capacity)  # once: a copy when the ring has wrapped
        within = at >= now - LAST_5M_S  # NaN (time unknown) is never within
        windows["last_5m"] = window_of(y_true[within], y_pred[within], self.baseline)
        return {
            "windows": windows,
            "by_model_version": {version: history.window() for version, history in self.by_version.items()},
            "latency": _p50_p99(self.latency_s),
            "lag": _p50_p99(self.lag_s),
            "label_lag": _p50_p99(self.label_lag_s),
            "last_id": self.last_id,
            "last_row_at": self.last_row_at,
            "rows_per_s": int(np.count_nonzero(at >= now - RATE_WINDOW_S)) / RATE_WINDOW_S,
        }


def _columns(rows: Sequence[MetricRow]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.fromiter((row.y_true for row in rows), float, len(rows)),
        np.fromiter((row.y_pred for row in rows), float, len(rows)),
    )


def _p50_p99(samples: deque[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_s": None, "p99_s": None}
    p50, p99 = np.percentile(np.fromiter(samples, float, len(samples)), [50, 99])
    return {"p50_s": finite_or_none(p50), "p99_s": finite_or_none(p99)}
