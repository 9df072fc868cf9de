"""The twelve numbers of a window of metric rows (``WindowStats``), from running sums merged one
batch at a time. No I/O. Errors are signed as ``e = y_pred - y_true`` (so ``me`` is the bias).

- Sums are merged batch by batch with compensated (Neumaier) addition, and the mean and sum of
  squared deviations of ``y_true`` with Chan's formula, so r2 does not suffer the cancellation of
  ``Σy² - n·ȳ²``.
- Percentiles interpolate linearly, as numpy's and pandas' defaults do.
- A row whose numbers are not finite, or so large that their squares would overflow the sums
  (beyond ``STATS_ABS_MAX``), is left out by the caller (``usable``): one such row must never turn
  every statistic into null for good.

metric_api keeps these windows of its rows (services/metric_api/stats.py), plot_api of the union
of the shards' rows (services/common/row_windows.py holds both).
"""

import math

import numpy as np

from services.common.contracts.summary import WINDOW_FIELDS

Window = dict[str, float | int | None]  # WINDOW_FIELDS -> value: a WindowStats as a dict
# Beyond this, a value's square (and a sum of a billion of them) is no longer a finite float.
STATS_ABS_MAX = 1e100
PERCENTILES = (50, 90, 95)  # p50_ae, p90_ae, p95_ae


def usable(y_true: float, y_pred: float) -> bool:
    """Whether a row can enter the statistics (see the module's docstring)."""
    return abs(y_true) <= STATS_ABS_MAX and abs(y_pred) <= STATS_ABS_MAX  # False for NaN too


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

    def parts(self) -> list[float]:
        """The sum and its compensation, to be made again bit for bit (``of_parts``: snapshots)."""
        return [self._sum, self._compensation]

    @classmethod
    def of_parts(cls, total: float, compensation: float) -> "CompensatedSum":
        made = cls()
        made._sum, made._compensation = float(total), float(compensation)
        return made


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
        if self.count == 0:
            return empty_window()
        if ascending:
            p50, p90, p95 = (percentile_of_sorted(absolute_errors, q) for q in PERCENTILES)
            max_ae = absolute_errors[-1]
        else:
            p50, p90, p95 = np.percentile(absolute_errors, PERCENTILES)
            max_ae = np.max(absolute_errors)
        return self.window_of_percentiles((float(p50), float(p90), float(p95)), float(max_ae))

    @np.errstate(over="ignore", invalid="ignore")
    def window_of_percentiles(self, percentiles: tuple[float, ...], max_ae: float) -> Window:
        """The window's numbers, its p50/p90/p95 of |e| (``PERCENTILES``) and its max |e| given."""
        n = self.count
        if n == 0:
            return empty_window()
        p50, p90, p95 = percentiles
        mae = self.sum_ae.value / n
        sum_e2 = self.sum_e2.value
        baseline_mae = self.sum_baseline_ae.value / n if self.baseline is not None else None
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


def batch_of(sums: ErrorSums, absolute_errors: np.ndarray) -> BatchSums:
    """A window's sums as one batch (with ``absolute_errors``, those of its rows or none), to merge
    into another window (``ErrorSums.merge`` takes batches)."""
    batch = BatchSums.__new__(BatchSums)
    batch.count = sums.count
    batch.sum_e, batch.sum_e2, batch.sum_ae = sums.sum_e.value, sums.sum_e2.value, sums.sum_ae.value
    batch.sum_ape, batch.count_ape = sums.sum_ape.value, sums.count_ape
    batch.sum_baseline_ae = sums.sum_baseline_ae.value
    batch.mean_y, batch.m2_y = sums.mean_y, sums.m2_y
    batch.absolute_errors = absolute_errors
    return batch


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
