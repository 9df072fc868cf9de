"""The window drift judges: the last samples model_api predicted for, within a time. No I/O."""

import numpy as np


class SlidingWindow:
    """The last ``size`` rows added, of those added in the last ``max_age_s`` seconds, in a ring
    buffer: ``size`` × ``width`` floats and ``size`` times, allocated once."""

    def __init__(self, size: int, max_age_s: float, width: int) -> None:
        if size < 1 or not max_age_s > 0:
            raise ValueError(f"a window needs a size ≥ 1 and an age > 0, not {size} and {max_age_s}")
        self.size = size
        self.max_age_s = max_age_s
        self.width = width
        self._values = np.zeros((size, width))
        self._times = np.zeros(size)
        self._end = 0  # where the next row goes
        self.count = 0
        self.seen = 0  # rows ever added
        self.version = 0  # changes whenever the rows in the window change

    @property
    def nbytes(self) -> int:
        return self._values.nbytes + self._times.nbytes

    def add(self, rows: np.ndarray, now: float) -> None:
        """Add a batch of rows (``k × width``), all seen at ``now``; the oldest make room."""
        if len(rows) == 0:
            return
        self.seen += len(rows)
        rows = rows[-self.size :]
        k = len(rows)
        first = self._end
        stop = min(self.size, first + k)
        self._values[first:stop] = rows[: stop - first]
        self._values[: k - (stop - first)] = rows[stop - first :]
        self._times[first:stop] = now
        self._times[: k - (stop - first)] = now
        self._end = (first + k) % self.size
        self.count = min(self.size, self.count + k)
        self.version += 1

    def _oldest_first(self) -> np.ndarray:
        return (self._end - self.count + np.arange(self.count)) % self.size

    def expire(self, now: float) -> None:
        """Drop the rows older than ``max_age_s`` (the oldest first)."""
        if self.count == 0:
            return
        fresh = self._times[self._oldest_first()] >= now - self.max_age_s
        stale = int(np.argmax(fresh)) if fresh.any() else self.count
        if stale:
            self.count -= stale
            self.version += 1

    def rows(self) -> np.ndarray:
        """A copy of the rows in the window, oldest first."""
        rows: np.ndarray = self._values[self._oldest_first()]
        return rows

    def span(self) -> tuple[float | None, float | None]:
        """When the oldest and the newest row in the window were added."""
        if self.count == 0:
            return None, None
        order = self._oldest_first()
        return float(self._times[order[0]]), float(self._times[order[-1]])
