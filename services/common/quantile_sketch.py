"""A mergeable quantile sketch of non-negative values with a relative-error guarantee. No I/O.

DDSketch's logarithmic mapping (Masson, Rim and Lee, "DDSketch: A Fast and Fully-Mergeable Quantile
Sketch with Relative-Error Guarantees", PVLDB 12(12), 2019; the ``ddsketch`` package's
``LogarithmicMapping`` and ``CollapsingLowestDenseStore``): with ``a`` the relative accuracy and
``gamma = (1 + a) / (1 - a)``, a value ``x > 0`` is counted in bucket ``k = ceil(log_gamma x)``, and
every value of bucket ``k`` is read back as ``2 gamma^k / (gamma + 1)``, within ``a`` of it
relatively. Zeros (an exact prediction) are counted apart and read back as 0. A quantile between two
order statistics is interpolated as numpy's default ("linear") percentile is, from the two read back:
a convex combination of two values each within ``a`` is within ``a`` of the exact interpolation, so
p50/p90/p95 are within ``RELATIVE_ACCURACY`` of numpy's.

Written here rather than taken from ``ddsketch`` 3.0.1: that package adds values one at a time in
Python (about 1 µs each: a millisecond a batch of 1,000 rows, bench/quantile_sketch.py), this one a
batch at a time with numpy (``log``, ``ceil``, ``bincount``).

Memory: at most ``MAX_BINS`` int64 counters (32 KiB), whatever the number of values: they cover
values from the largest down to ``gamma^-MAX_BINS`` times it (about 6e-18 at a = 0.5 %). Smaller
positive values are counted in the lowest bucket (the ``CollapsingLowest`` rule: they read back too
large, which only a quantile that falls among them shows).
"""

import math

import numpy as np

RELATIVE_ACCURACY = 0.005
MAX_BINS = 4096


class SketchMismatch(ValueError):
    """Two sketches of different parameters, which cannot be merged (or a saved one that is not of these)."""


class QuantileSketch:
    """Counts of non-negative finite values in logarithmic buckets; their exact count and maximum."""

    __slots__ = ("relative_accuracy", "max_bins", "gamma", "_multiplier", "bins", "offset", "zeros", "count", "max")

    def __init__(self, relative_accuracy: float = RELATIVE_ACCURACY, max_bins: int = MAX_BINS) -> None:
        if not 0 < relative_accuracy < 1 or max_bins < 1:
            raise ValueError(f"a sketch needs 0 < relative_accuracy < 1 and max_bins >= 1, not {relative_accuracy}, {max_bins}")
        self.relative_accuracy = relative_accuracy
        self.max_bins = max_bins
        self.gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._multiplier = 1 / math.log(self.gamma)
        self.bins = np.zeros(0, dtype=np.int64)  # the counts of buckets offset .. offset + max_bins - 1 (once a value > 0 came)
        self.offset = 0
        self.zeros = 0
        self.count = 0
        self.max = 0.0

    @property
    def nbytes(self) -> int:
        return int(self.bins.nbytes)

    def add(self, values: np.ndarray) -> None:
        """Count ``values`` (non-negative and finite: absolute errors)."""
        n = len(values)
        if n == 0:
            return
        self.count += n
        self.max = max(self.max, float(values.max()))
        positive = values[values > 0]
        self.zeros += n - len(positive)
        if len(positive):
            keys = np.ceil(np.log(positive) * self._multiplier).astype(np.int64)
            self._cover(int(keys.max()))
            self.bins += np.bincount(np.maximum(keys - self.offset, 0), minlength=self.max_bins)

    def _cover(self, top: int) -> None:
        """Make bucket ``top`` the highest held or below it: the lowest buckets collapse into the lowest kept."""
        if len(self.bins) == 0:
            self.bins = np.zeros(self.max_bins, dtype=np.int64)
            self.offset = top - self.max_bins + 1
            return
        shift = top - (self.offset + self.max_bins - 1)
        if shift <= 0:
            return
        collapsed = int(self.bins[:shift].sum())
        kept = self.bins[shift:] if shift < self.max_bins else self.bins[:0]
        bins = np.zeros(self.max_bins, dtype=np.int64)
        bins[: len(kept)] = kept
        bins[0] += collapsed
        self.bins, self.offset = bins, self.offset + shift

    def merge(self, other: "QuantileSketch") -> None:
        """Add ``other``'s values (a sketch of the same parameters)."""
        if (other.relative_accuracy, other.max_bins) != (self.relative_accuracy, self.max_bins):
            raise SketchMismatch(
                f"a sketch of accuracy {other.relative_accuracy} and {other.max_bins} bins does not merge into "
                f"one of {self.relative_accuracy} and {self.max_bins}"
            )
        self.count += other.count
        self.zeros += other.zeros
        self.max = max(self.max, other.max)
        if len(other.bins) == 0:
            return
        self._cover(other.offset + self.max_bins - 1)
        positions = np.maximum(other.offset + np.arange(self.max_bins) - self.offset, 0)
        self.bins += np.bincount(positions, weights=other.bins, minlength=self.max_bins).astype(np.int64)

    def _values_at(self, ranks: np.ndarray) -> np.ndarray:
        """The values read back for the order statistics ``ranks`` (0-based, ascending order)."""
        out = np.zeros(len(ranks))
        positive = ranks >= self.zeros
        if positive.any():
            cumulative = np.cumsum(self.bins)
            index = np.searchsorted(cumulative, ranks[positive] - self.zeros, side="right")
            value = 2 * self.gamma ** (self.offset + index.astype(float)) / (self.gamma + 1)
            out[positive] = np.minimum(value, self.max)  # the true value is at most the maximum
        return out

    def percentiles(self, qs: tuple[float, ...]) -> tuple[float, ...]:
        """numpy's default ("linear") percentiles ``qs`` (0-100), each within ``relative_accuracy`` of the exact."""
        if self.count == 0:
            raise ValueError("no values: no percentile")
        index = np.array(qs, dtype=float) / 100 * (self.count - 1)
        below = np.floor(index)
        above = np.minimum(below + 1, self.count - 1)
        t = index - below
        a = self._values_at(below.astype(np.int64))
        b = self._values_at(above.astype(np.int64))
        diff = b - a
        out = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)  # as error_window.percentile_of_sorted
        return tuple(float(value) for value in out)

    # -- to JSON-ready meta and one array, and back (services/common/snapshots.py)
    def meta(self) -> dict[str, float | int]:
        return {
            "relative_accuracy": self.relative_accuracy,
            "max_bins": self.max_bins,
            "offset": self.offset,
            "zeros": self.zeros,
            "count": self.count,
            "max": self.max,
        }

    @classmethod
    def of(cls, meta: dict[str, float | int], bins: np.ndarray) -> "QuantileSketch":
        """What ``meta`` and ``bins`` saved; SketchMismatch (a ValueError) if they do not make a sketch."""
        sketch = cls(float(meta["relative_accuracy"]), int(meta["max_bins"]))
        if len(bins) not in (0, sketch.max_bins) or bins.dtype != np.int64 or (len(bins) and int(bins.min()) < 0):
            raise SketchMismatch(f"{len(bins)} counters of {bins.dtype}, not {sketch.max_bins} non-negative int64")
        sketch.bins = bins
        sketch.offset, sketch.zeros, sketch.count = int(meta["offset"]), int(meta["zeros"]), int(meta["count"])
        sketch.max = float(meta["max"])
        if sketch.zeros + int(bins.sum()) != sketch.count:
            raise SketchMismatch(f"{sketch.zeros} zeros and {int(bins.sum())} counted are not the {sketch.count} values")
        return sketch
