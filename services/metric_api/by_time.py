"""The error by the time the prediction was made. No I/O.

Predictions fall in buckets of ``bucket_s`` seconds by when they were made (the y_pred message's
``ts``: when features_api published the sample, when /predict served it, or the ``ts`` a caller
gave /predictions; when it has none, when it reached the join). A bucket counts its predictions as
each reaches the join, and its labelled ones, with the statistics over them (as ``all``'s: sums and
one float64 |e| a row), as each label joins: a late label revises the bucket of its prediction,
however old, while that bucket is kept.

Bounded: the ``kept`` newest buckets up to now are kept; an older one is dropped whole (its
predictions and labelled rows counted in ``dropped``), and a prediction or label for a bucket older
than those, or more than one bucket in the future (a wrong clock), is counted there too. At start-up
the buckets are rebuilt from the state: its written rows (each with when its prediction was made)
and its waiting predictions; or from a snapshot (``save``/``load``) and the rows written since, with
the waiting predictions again from the state. So a snapshot keeps of each bucket its predictions
that have a row (``written``), not those still waiting: these are counted once, from the state, at
every start, whether they were counted on arrival before the snapshot or not.
"""

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from services.common.error_window import usable
from services.common.metric_rows import MetricRow
from services.common.row_windows import PART_EXACT_ROWS, ErrorHistory
from services.common.settings import ALL_EXACT_ROWS
from services.common.snapshots import Snapshot, SnapshotUnusable, load_history, save_history


class Bucket:
    __slots__ = ("predictions", "rows", "written")

    def __init__(self, baseline: float | None, exact_rows: int = PART_EXACT_ROWS) -> None:
        self.predictions = 0  # every prediction that reached the join (on arrival)
        self.written = 0  # those of them whose row was written (what a snapshot keeps)
        self.rows = ErrorHistory(baseline, exact_rows)


class ErrorByTime:
    def __init__(self, bucket_s: float, kept: int, baseline: float | None = None, exact_rows: int = ALL_EXACT_ROWS) -> None:
        self.exact_rows = min(exact_rows, PART_EXACT_ROWS)  # one of many populations
        self.bucket_s = bucket_s
        self.kept = kept
        self.baseline = baseline
        self.buckets: dict[int, Bucket] = {}  # bucket number (start // bucket_s) -> bucket
        self.dropped_predictions = 0
        self.dropped_labelled = 0
        self.dropped_written = 0  # of dropped_predictions, those whose row was written

    def _number(self, at: float) -> int:
        return math.floor(at / self.bucket_s)

    def _range(self, now: float) -> tuple[int, int]:
        current = self._number(now)
        return current - self.kept + 1, current + 1  # the kept buckets up to now, and one ahead for clock skew

    def _bucket(self, number: int, now: float) -> Bucket | None:
        low, high = self._range(now)
        if not low <= number <= high:
            return None
        bucket = self.buckets.get(number)
        if bucket is None:
            bucket = self.buckets[number] = Bucket(self.baseline, self.exact_rows)
        return bucket

    def add_predictions(self, made_at: Iterable[float], now: float) -> None:
        """Predictions that reached the join (each once: held, or joined at once), by when each was made."""
        for at in made_at:
            bucket = self._bucket(self._number(at), now)
            if bucket is None:
                self.dropped_predictions += 1
            else:
                bucket.predictions += 1
        self.expire(now)

    def add_rows(self, rows: Sequence[MetricRow], now: float) -> None:
        """Rows just joined: each revises the bucket of its prediction."""
        by_bucket: dict[int, list[MetricRow]] = {}
        for row in rows:
            if row.predicted_at is not None:
                by_bucket.setdefault(self._number(row.predicted_at), []).append(row)
        for number, written in by_bucket.items():
            bucket = self._bucket(number, now)
            mine = [row for row in written if usable(row.y_true, row.y_pred)]
            if bucket is None:
                self.dropped_written += len(written)
                self.dropped_labelled += len(mine)
                continue
            bucket.written += len(written)
            if not mine:
                continue
            y_true = np.fromiter((row.y_true for row in mine), float, len(mine))
            y_pred = np.fromiter((row.y_pred for row in mine), float, len(mine))
            bucket.rows.add(y_true, y_pred)
        self.expire(now)

    def add_history(self, rows: Sequence[MetricRow], now: float) -> None:
        """Rows read back at start-up: each a prediction of its bucket, and labelled."""
        made = [row.predicted_at for row in rows if row.predicted_at is not None]
        self.add_predictions(made, now)
        self.add_rows(rows, now)

    def expire(self, now: float) -> None:
        low, _ = self._range(now)
        for number in [n for n in self.buckets if n < low]:
            bucket = self.buckets.pop(number)
            self.dropped_predictions += bucket.predictions
            self.dropped_labelled += bucket.rows.count
            self.dropped_written += bucket.written

    # -- snapshots (services/common/snapshots.py)
    def save(self, snapshot: Snapshot) -> None:
        """Each bucket's rows and its predictions that have a row; not the predictions still waiting."""
        numbers = sorted(self.buckets)
        snapshot.meta["by_time"] = {
            "bucket_s": self.bucket_s,
            "kept": self.kept,
            "buckets": [[number, self.buckets[number].written] for number in numbers],
            "dropped_written": self.dropped_written,
            "dropped_labelled": self.dropped_labelled,
        }
        for index, number in enumerate(numbers):
            save_history(self.buckets[number].rows, f"by_time{index}", snapshot)

    def load(self, snapshot: Snapshot) -> None:
        """Into fresh buckets, what ``save`` saved: each bucket counts its written predictions; the
        waiting ones are added from the state (``add_predictions``)."""
        meta = snapshot.meta["by_time"]
        if (meta["bucket_s"], meta["kept"]) != (self.bucket_s, self.kept):
            made, wanted = f"{meta['bucket_s']}s x {meta['kept']}", f"{self.bucket_s}s x {self.kept}"
            raise SnapshotUnusable(f"made with buckets of {made}, not {wanted}")
        for index, (number, written) in enumerate(meta["buckets"]):
            bucket = self.buckets[int(number)] = Bucket(self.baseline, self.exact_rows)
            bucket.rows = load_history(self.baseline, f"by_time{index}", snapshot, self.exact_rows)
            bucket.predictions = bucket.written = int(written)
        self.dropped_written = self.dropped_predictions = int(meta["dropped_written"])
        self.dropped_labelled = int(meta["dropped_labelled"])

    def report(self, now: float) -> dict[str, Any]:
        """As ``ByTime``: the buckets oldest first."""
        self.expire(now)
        buckets = []
        for number in sorted(self.buckets):
            bucket = self.buckets[number]
            labelled = bucket.rows.count
            predictions = max(bucket.predictions, labelled)
            buckets.append(
                {
                    "start": float(number * self.bucket_s),
                    "end": float((number + 1) * self.bucket_s),
                    "predictions": predictions,
                    "labelled": labelled,
                    "labelled_share": labelled / predictions if predictions else None,
                    "stats": bucket.rows.window(),
                }
            )
        return {
            "bucket_s": self.bucket_s,
            "buckets_kept": self.kept,
            "buckets": buckets,
            "dropped": {"predictions": self.dropped_predictions, "labelled": self.dropped_labelled},
        }
