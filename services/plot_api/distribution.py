"""The distribution of absolute errors over every row, in constant memory. No I/O.

Exact count, mean, minimum and maximum; quantiles (the median) and histogram counts from
logarithmic buckets: every value lands in a bucket whose bounds are within ``RELATIVE_ACCURACY``
of each other, so a quantile is known to that relative accuracy (the DDSketch idea), whatever
the number of rows. A million rows cost the same memory and time to draw as a thousand.
"""

import math

import numpy as np

RELATIVE_ACCURACY = 0.001  # a quantile is within 0.1 % of the true one
SMALLEST = 1e-6  # errors below this count as zero
LARGEST = 1e12  # errors above this share the last bucket (the maximum stays exact)
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
_OFFSET = math.ceil(math.log(SMALLEST) / _LOG_GAMMA)
BUCKETS = math.ceil(math.log(LARGEST) / _LOG_GAMMA) - _OFFSET + 1


def _bucket_values() -> np.ndarray:
    """The value each bucket stands for: within RELATIVE_ACCURACY of anything in it."""
    upper = _GAMMA ** (np.arange(BUCKETS) + _OFFSET)
    return 2 * upper / (_GAMMA + 1)


class ErrorDistribution:
    """Absolute errors (non-negative, finite) taken in batch by batch."""

    def __init__(self) -> None:
        self.count = 0
        self._sum = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self._zeros = 0
        self._buckets = np.zeros(BUCKETS, dtype=np.int64)
        self._values = _bucket_values()

    def add(self, errors: np.ndarray) -> None:
        errors = np.asarray(errors, dtype=float)
        if errors.size == 0:
            return
        if not np.all(np.isfinite(errors)) or errors.min() < 0:
            raise ValueError("absolute errors must be finite and non-negative")
        self.count += int(errors.size)
        self._sum += float(errors.sum())
        self.minimum = min(self.minimum, float(errors.min()))
        self.maximum = max(self.maximum, float(errors.max()))
        positive = errors[errors >= SMALLEST]
        self._zeros += int(errors.size - positive.size)
        index = np.ceil(np.log(positive) / _LOG_GAMMA).astype(np.int64) - _OFFSET
        self._buckets += np.bincount(np.clip(index, 0, BUCKETS - 1), minlength=BUCKETS)

    @property
    def mean(self) -> float:
        self._need_rows()
        return self._sum / self.count

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0 ≤ q ≤ 1), to within RELATIVE_ACCURACY."""
        self._need_rows()
        if not 0 <= q <= 1:
            raise ValueError(f"a quantile is between 0 and 1, not {q}")
        rank = q * (self.count - 1)  # 0-based; between two rows, interpolated as numpy does
        below = math.floor(rank)
        low, high = self._value_at(below), self._value_at(min(below + 1, self.count - 1))
        return low + (high - low) * (rank - below)

    def _value_at(self, rank: int) -> float:
        """The value of the row with this 0-based rank in sorted order, to within the accuracy."""
        if rank == 0:
            return self.minimum
        if rank >= self.count - 1:
            return self.maximum
        if rank < self._zeros:
            return self.minimum if self.minimum < SMALLEST else 0.0
        bucket = int(np.searchsorted(np.cumsum(self._buckets), rank - self._zeros, side="right"))
        return float(min(max(self._values[bucket], self.minimum), self.maximum))

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    def histogram(self, max_bins: int) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) over [minimum, maximum] with numpy's 'auto' bin rule, at most ``max_bins``.

        Each bucket's rows fall in the bin holding its value, so a bin edge is as sharp as the
        buckets (RELATIVE_ACCURACY); that is invisible at the width of a chart.
        """
        self._need_rows()
        low, high = self.minimum, self.maximum
        if not high > low:
            low, high = low - 0.5, high + 0.5
        bins = max_bins
        spread = self.quantile(0.75) - self.quantile(0.25)
        sturges = (high - low) / (math.log2(self.count) + 1)
        width = min(2 * spread * self.count ** (-1 / 3), sturges) if spread > 0 else sturges
        if width > 0:
            bins = max(1, min(max_bins, math.ceil((high - low) / width)))
        edges = np.linspace(low, high, bins + 1)
        present = self._buckets > 0
        values = np.clip(self._values[present], self.minimum, self.maximum)
        index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
        counts = np.bincount(index, weights=self._buckets[present], minlength=bins).astype(np.int64)
        counts[0] += self._zeros
        return counts, edges

    # -- snapshots (services/common/snapshots.py)
    def parts(self) -> tuple[np.ndarray, np.ndarray]:
        """(count, sum, minimum, maximum, zeros) and the bucket counts: the whole state."""
        return np.array([self.count, self._sum, self.minimum, self.maximum, self._zeros], dtype=float), self._buckets.copy()

    @classmethod
    def of_parts(cls, scalars: np.ndarray, buckets: np.ndarray) -> "ErrorDistribution":
        made = cls()
        if buckets.shape != made._buckets.shape or scalars.shape != (5,):
            raise ValueError(f"{buckets.shape} buckets and {scalars.shape} numbers, not {made._buckets.shape} and (5,)")
        count, made._sum, made.minimum, made.maximum, zeros = (float(x) for x in scalars)
        made.count, made._zeros = int(count), int(zeros)
        made._buckets = buckets.astype(np.int64)
        return made

    def _need_rows(self) -> None:
        if self.count == 0:
            raise ValueError("no errors yet")
