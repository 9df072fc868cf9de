"""The error per segment: per key of SEGMENT_KEYS and per value of it, the windows metric_api
keeps globally, within a budget. No I/O.

Per key at most ``values_max`` values are tracked; rows of any other value go to ``(other)``.
So a key holds at most ``values_max + 1`` segments and Prometheus at most that many series a
window, whatever the traffic (100,000 distinct values included).

Which values are tracked: the first ``values_max`` values seen, then the most frequent. Rows of
untracked values are counted in a Misra–Gries summary of ``SKETCH_FACTOR × values_max`` counters
(its count of a value is a lower bound of the rows the value had since the summary began, off by at
most n/(counters+1)); a value whose count there reaches ``PROMOTE_FACTOR`` times the rows of the
least frequent tracked value takes its place. The value it replaces is folded into ``(other)``
(its ``all`` sums and errors; its newest rows are not moved), and the promoted value counts its rows
from then on: its earlier rows stay in ``(other)``. With at most ``values_max`` values per key,
nothing is ever folded: each value's statistics are exactly those of its rows.

Per segment: ``all`` (running sums and one float64 |e| a row, as the global ``all``, up to
``PART_EXACT_ROWS`` rows or ALL_EXACT_ROWS if fewer; then a quantile sketch of 32 KiB: percentiles
within 0.5 %) and a ring of the newest ``RING_ROWS`` rows for ``last_100`` and ``last_1000`` and for
the segment's check of the estimate (y_true, y_pred and the estimated error each prediction carried,
NaN where none): 3 × 8 × 1,000 bytes. So a segment holds at most 24 KB + 8 bytes a row up to
100,000 rows (1 MiB of capacity at most), and 24 KB + 32 KiB beyond.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common.error_window import Window, window_of
from services.common.metric_rows import MetricRow
from services.common.row_windows import PART_EXACT_ROWS, ErrorHistory, RowRing
from services.common.segment_rank import mae_low
from services.common.settings import ALL_EXACT_ROWS
from services.common.snapshots import Snapshot, SnapshotUnusable, load_history, save_history
from services.metric_api.estimate import CHECK_ROWS, checked_rows

OTHER = "(other)"
RING_ROWS = 1000
SEGMENT_WINDOWS = {"last_100": 100, "last_1000": 1000}
SKETCH_FACTOR = 4
PROMOTE_FACTOR = 2.0


class SegmentStats:
    """One segment's rows: ``all`` and a ring of the newest (its third column: their estimated errors)."""

    __slots__ = ("all", "ring", "baseline", "exact_rows", "estimated_rows")

    def __init__(self, baseline: float | None, exact_rows: int = PART_EXACT_ROWS) -> None:
        self.baseline = baseline
        self.exact_rows = exact_rows
        self.all = ErrorHistory(baseline, exact_rows)
        self.ring = RowRing(RING_ROWS)
        self.estimated_rows = 0  # rows that carried an estimate (those of the ring, after a load)

    @property
    def count(self) -> int:
        return self.all.count

    def add(self, y_true: np.ndarray, y_pred: np.ndarray, estimates: np.ndarray) -> None:
        self.all.add(y_true, y_pred)
        self.ring.extend(y_true, y_pred, estimates)
        self.estimated_rows += int(np.count_nonzero(np.isfinite(estimates)))

    def fold_into(self, other: "SegmentStats") -> None:
        """Add this segment's ``all`` to ``other``'s (its sums and errors, not its ring)."""
        other.all.absorb(self.all)

    @np.errstate(over="ignore", invalid="ignore")
    def recent_mae(self, rows: int) -> tuple[float | None, int]:
        y_true, y_pred, _ = self.ring.last(rows)
        return (float(np.mean(np.abs(y_pred - y_true))) if len(y_true) else None), len(y_true)

    @np.errstate(over="ignore", invalid="ignore")
    def estimated(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """|e| and the estimated error of the newest ``rows`` rows that carried an estimate (of the ring's)."""
        if not self.estimated_rows:  # the common case without a loss model: nothing to look at
            return np.zeros(0), np.zeros(0)
        y_true, y_pred, estimates = self.ring.last(rows)  # the newest ``rows`` first: mostly each has its estimate
        loss = np.abs(y_pred - y_true)
        known = np.isfinite(estimates) & np.isfinite(loss)
        if len(loss) == rows and not known.all():  # some had none: the rows before them may have one
            y_true, y_pred, estimates = self.ring.last(self.ring.capacity)
            loss = np.abs(y_pred - y_true)
            known = np.isfinite(estimates) & np.isfinite(loss)
        return loss[known][-rows:], estimates[known][-rows:]

    def checked(self) -> dict[str, Any] | None:
        """Its estimate checked: the newest ``CHECK_ROWS`` rows with an estimate, realized MAE beside
        estimated, and the band (as a model version's ``checked``); None while no row had an estimate."""
        loss, estimate = self.estimated(CHECK_ROWS)
        return checked_rows(loss, estimate) if len(loss) else None

    def windows(self) -> dict[str, Window]:
        out = {"all": self.all.window()}
        for name, size in SEGMENT_WINDOWS.items():
            y_true, y_pred, _ = self.ring.last(size)
            out[name] = window_of(y_true, y_pred, self.baseline)
        return out

    def nbytes(self) -> int:
        """The bytes of its arrays (the ring, and the |e| values held or the sketch)."""
        return 3 * self.ring.y_true.nbytes + self.all.nbytes()

    def save(self, name: str, snapshot: Snapshot) -> None:
        save_history(self.all, name, snapshot)
        snapshot.arrays[f"{name}.ring"] = np.stack(self.ring.last(self.ring.capacity))
        snapshot.meta[f"{name}.ring_total"] = self.ring.total

    @classmethod
    def load(cls, baseline: float | None, name: str, snapshot: Snapshot, exact_rows: int = PART_EXACT_ROWS) -> "SegmentStats":
        stats = cls(baseline, exact_rows)
        stats.all = load_history(baseline, name, snapshot, exact_rows)
        ring = snapshot.arrays[f"{name}.ring"]
        y_true, y_pred = ring[0], ring[1]
        estimates = ring[2] if len(ring) > 2 else np.full(len(y_true), np.nan)  # a snapshot of a release before them
        stats.ring.total = int(snapshot.meta[f"{name}.ring_total"]) - len(y_true)
        stats.ring.extend(y_true, y_pred, estimates)
        stats.estimated_rows = int(np.count_nonzero(np.isfinite(estimates)))
        return stats


class KeySegments:
    """The segments of one key: the tracked values, ``(other)``, and the frequencies of the untracked."""

    def __init__(self, key: str, values_max: int, baseline: float | None, exact_rows: int = PART_EXACT_ROWS) -> None:
        self.key = key
        self.exact_rows = exact_rows
        self.values_max = values_max
        self.baseline = baseline
        self.tracked: dict[str, SegmentStats] = {}
        self.other = SegmentStats(baseline, exact_rows)
        self.sketch: dict[str, int] = {}  # Misra–Gries counters of untracked values
        self.promoted = 0
        self._weakest_floor = 0  # a lower bound of the least count tracked: a cheap first test

    def segment_of(self, value: str) -> str:
        """Where a row of ``value`` goes: its own segment (tracked now, if there is room or it earned
        it), or ``(other)``."""
        if value in self.tracked:
            return value
        if len(self.tracked) < self.values_max and value != OTHER:
            self.tracked[value] = SegmentStats(self.baseline, self.exact_rows)
            return value
        count = self._count_untracked(value)
        if value != OTHER and count >= PROMOTE_FACTOR * max(1, self._weakest_floor):
            weakest = min(self.tracked, key=lambda name: self.tracked[name].count)
            least = self.tracked[weakest].count
            self._weakest_floor = least
            if count >= PROMOTE_FACTOR * max(1, least):
                self.tracked.pop(weakest).fold_into(self.other)
                self.tracked[value] = SegmentStats(self.baseline, self.exact_rows)
                del self.sketch[value]
                self.promoted += 1
                self._weakest_floor = 0
                return value
        return OTHER

    def _count_untracked(self, value: str) -> int:
        sketch = self.sketch
        count = sketch.get(value)
        if count is not None:
            sketch[value] = count + 1
            return count + 1
        if len(sketch) < SKETCH_FACTOR * self.values_max:
            sketch[value] = 1
            return 1
        # Misra–Gries: every counter down by one, the empty ones freed; the new value is not counted.
        self.sketch = {name: n - 1 for name, n in sketch.items() if n > 1}
        return 0

    def segments(self) -> dict[str, SegmentStats]:
        return {**self.tracked, OTHER: self.other}


class SegmentBook:
    """Every key's segments, fed the rows of each committed batch (those carrying tags)."""

    def __init__(self, keys: Sequence[str], values_max: int, baseline: float | None, exact_rows: int = ALL_EXACT_ROWS) -> None:
        self.keys = tuple(keys)
        exact_rows = min(exact_rows, PART_EXACT_ROWS)  # one of many populations
        self.by_key = {key: KeySegments(key, values_max, baseline, exact_rows) for key in self.keys}

    def add(
        self, rows: Sequence[MetricRow], y_true: np.ndarray, y_pred: np.ndarray, estimates: np.ndarray | None = None
    ) -> list[tuple[str, str]]:
        """Rows (and their columns: the estimated errors NaN where none; None: none had one) of one
        batch; returns the segments (key, value) that took rows."""
        touched: list[tuple[str, str]] = []
        if not self.keys:
            return touched
        if estimates is None:
            estimates = np.full(len(rows), np.nan)
        for key, book in self.by_key.items():
            names = [book.segment_of(tags[key]) if (tags := row.tags) and key in tags else None for row in rows]
            segments = book.segments()
            # A value promoted and then replaced within the batch (its count is taken after the batch):
            # its rows go to (other), where it was folded.
            names = [name if name is None or name in segments else OTHER for name in names]
            distinct = {name for name in names if name is not None}
            if not distinct:
                continue
            labels = np.array([name or "" for name in names], dtype=object)
            for name in distinct:
                mine = labels == name
                segments[name].add(y_true[mine], y_pred[mine], estimates[mine])
                touched.append((key, name))
        return touched

    def get(self, key: str, value: str) -> SegmentStats | None:
        book = self.by_key.get(key)
        return None if book is None else book.segments().get(value)

    def summary(self) -> dict[str, Any]:
        """As the summary's ``segments`` (``SegmentKey`` by key)."""
        out: dict[str, Any] = {}
        for key, book in self.by_key.items():
            values = {}
            for name, stats in book.segments().items():
                if stats.count == 0 and name == OTHER:
                    continue
                windows = stats.windows()
                values[name] = {"windows": windows, "mae_low": mae_low(windows["last_1000"]), "checked": stats.checked()}
            out[key] = {"values": values, "tracked": len(book.tracked), "values_max": book.values_max, "promoted": book.promoted}
        return out

    def approximate(self) -> list[str]:
        """The segments whose ``all`` percentiles are a sketch's, as ``segments.<key>.<value>.all``."""
        return [
            f"segments.{key}.{name}.all"
            for key, book in self.by_key.items()
            for name, stats in book.segments().items()
            if stats.all.approximate
        ]

    def segment_count(self) -> int:
        return sum(len(book.tracked) + 1 for book in self.by_key.values())

    def nbytes(self) -> int:
        return sum(stats.nbytes() for book in self.by_key.values() for stats in book.segments().values())

    # -- snapshots (services/common/snapshots.py): every segment, the Misra–Gries counters, in their order
    def save(self, snapshot: Snapshot) -> None:
        keys = []
        for number, book in enumerate(self.by_key.values()):
            keys.append(
                {
                    "key": book.key,
                    "values_max": book.values_max,
                    "tracked": list(book.tracked),
                    "sketch": list(book.sketch.items()),
                    "promoted": book.promoted,
                    "weakest_floor": book._weakest_floor,
                }
            )
            for index, stats in enumerate(book.tracked.values()):
                stats.save(f"segment{number}.{index}", snapshot)
            book.other.save(f"segment{number}.other", snapshot)
        snapshot.meta["segments"] = keys

    def load(self, snapshot: Snapshot) -> None:
        """Into a fresh book of the same keys and ``values_max``, what ``save`` saved."""
        keys = snapshot.meta["segments"]
        made = [(meta["key"], meta["values_max"]) for meta in keys]
        wanted = [(book.key, book.values_max) for book in self.by_key.values()]
        if made != wanted:
            raise SnapshotUnusable(f"made with the segment keys (and values_max) {made}, not {wanted}")
        for number, (book, meta) in enumerate(zip(self.by_key.values(), keys, strict=True)):
            book.tracked = {
                str(value): SegmentStats.load(book.baseline, f"segment{number}.{index}", snapshot, book.exact_rows)
                for index, value in enumerate(meta["tracked"])
            }
            book.other = SegmentStats.load(book.baseline, f"segment{number}.other", snapshot, book.exact_rows)
            book.sketch = {str(value): int(count) for value, count in meta["sketch"]}
            book.promoted, book._weakest_floor = int(meta["promoted"]), int(meta["weakest_floor"])
