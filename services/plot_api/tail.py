"""Following ``metric_log.csv``: read only what was appended since the last look, across its rotation."""

import logging
import math
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from services.common.files import rotated_metric_logs
from services.common.metric_rows import (
    ID,
    METRIC_LOG_HEADER,
    Y_PRED,
    Y_TRUE,
    RowFormatError,
    parse_error,
    parse_number,
    split_line,
)
from services.common.snapshots import Snapshot, SnapshotUnusable, fingerprint
from services.plot_api.distribution import ErrorDistribution

log = logging.getLogger(__name__)


RECENT_ROWS_DRAWN = 5000  # the newest rows kept whole for the recent-rows charts
READ_CHUNK = 4 << 20  # bytes


class MetricLogTail:
    """The CSV's rows, kept up to date by reading new complete lines, in bounded memory:
    the distribution of every ``absolute_error`` and the last ``recent`` rows in full.

    A line still being written (no newline yet) is left for the next look. The file is followed
    by its inode: rotated (METRIC_LOG_MAX_BYTES, renamed ``metric_log.<generation>.csv``), it is
    read to its end under its new name, then the later generations and the new file from their
    start. Replaced, truncated or gone, everything kept (rotated files, oldest first, then the
    current) is read again from the start.
    """

    def __init__(self, path: Path, recent: int = RECENT_ROWS_DRAWN) -> None:
        self.path = path
        self.recent = recent
        self._reading = threading.Lock()  # a snapshot is not taken halfway through a read
        self.skipped_lines = 0
        self.changes = 0  # goes up whenever what was read changes: rows added, or a new file
        self._start_over(None)

    def _start_over(self, inode: int | None) -> None:
        self.changes += 1
        self._offset, self._inode = 0, inode
        self._file = self.path  # the file being read: metric_log.csv, or a rotated one being finished
        self.distribution = ErrorDistribution()
        self._y_true: deque[float] = deque(maxlen=self.recent)
        self._y_pred: deque[float] = deque(maxlen=self.recent)
        self._errors: deque[float] = deque(maxlen=self.recent)
        self.last_id: str | None = None

    def describe(self) -> str:
        """Where the rows come from, for messages."""
        return str(self.path)

    def close(self) -> None:
        """Nothing to let go of: a file is opened at each look (ShardRowsTail has a client to close)."""

    @property
    def count(self) -> int:
        return self.distribution.count

    def recent_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y_true, y_pred, absolute_error) of the last rows, oldest first (copies)."""
        return np.array(self._y_true), np.array(self._y_pred), np.array(self._errors)

    def recent_errors(self) -> np.ndarray:
        return np.array(self._errors)

    @property
    def first_recent_row(self) -> int:
        """The number (from 1) of the oldest row in ``recent_rows()``."""
        return self.count - len(self._errors) + 1

    def newest_row_time(self) -> float | None:
        """The newest row's id read as a time (epoch s): the features service's publish time."""
        try:
            value = float(self.last_id) if self.last_id is not None else math.nan
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    # -- snapshots: what was read, and where to go on (services/common/snapshots.py)
    def save(self, snapshot: Snapshot) -> None:
        with self._reading:
            self._save(snapshot)

    def _save(self, snapshot: Snapshot) -> None:
        scalars, buckets = self.distribution.parts()
        snapshot.arrays |= {"dist.scalars": scalars, "dist.buckets": buckets}
        snapshot.arrays["recent"] = np.array([self._y_true, self._y_pred, self._errors], dtype=float).reshape(3, -1)
        snapshot.meta["tail"] = {
            "kind": type(self).__name__,
            "last_id": self.last_id,
            "skipped_lines": self.skipped_lines,
            "recent": self.recent,
            **self._position(),
        }

    def _position(self) -> dict[str, Any]:
        return {"offset": self._offset, "inode": self._inode, "before_offset": fingerprint(self._file, self._offset)}

    def load(self, snapshot: Snapshot) -> None:
        """Go on from ``snapshot`` (SnapshotUnusable, and nothing changed, if it is not of these rows)."""
        meta = snapshot.meta["tail"]
        if meta["kind"] != type(self).__name__ or meta["recent"] != self.recent:
            raise SnapshotUnusable(f"made by a {meta['kind']} of {meta['recent']} recent rows")
        self._check_position(meta)
        distribution = ErrorDistribution.of_parts(snapshot.arrays["dist.scalars"], snapshot.arrays["dist.buckets"])
        self._start_over(meta["inode"])
        self.distribution, self.last_id, self.skipped_lines = distribution, meta["last_id"], meta["skipped_lines"]
        y_true, y_pred, errors = snapshot.arrays["recent"]
        self._y_true.extend(y_true.tolist())
        self._y_pred.extend(y_pred.tolist())
        self._errors.extend(errors.tolist())
        self._offset = meta.get("offset", 0)  # (the shards keep theirs: ShardRowsTail)

    def _check_position(self, meta: dict[str, Any]) -> None:
        found = [(path, inode) for path, inode, size in self._files() if inode == meta["inode"] and size >= meta["offset"]]
        if not found:
            raise SnapshotUnusable(f"{self.path} (or a rotated one) is not the file it was made of")
        if fingerprint(found[0][0], meta["offset"]) != meta["before_offset"]:
            raise SnapshotUnusable(f"{found[0][0]} is not the file it was made of (its bytes differ)")

    def _files(self, rotated: bool = True) -> list[tuple[Path, int, int]]:
        """(path, inode, size) of the log's files there now, oldest first: the rotated ones (unless not
        asked for), then metric_log.csv."""
        found = []
        paths = [path for _, path in rotated_metric_logs(self.path.parent)] if rotated else []
        for path in [*paths, self.path]:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((path, stat.st_ino, stat.st_size))
        return found

    def read_new(self) -> int:
        """Take in the rows appended since the last call; return how many."""
        with self._reading:
            return self._read_new()

    def _read_new(self) -> int:
        chain = self._files(rotated=False)
        if not chain or chain[0][1] != self._inode or chain[0][2] < self._offset:
            chain = self._files()  # a new file: the one read so far was rotated, replaced or cut (or none yet)
            inodes = [inode for _, inode, _ in chain]
            at = inodes.index(self._inode) if self._inode in inodes else None
            if at is not None and chain[at][2] >= self._offset:
                chain = chain[at:]  # finish the file being read, under its new name, then the later ones
            elif self._inode is not None:
                log.warning("%s was replaced or cut: reading it (and its rotated files) again from the start", self.path)
                self._start_over(None)
        added = 0
        for path, inode, size in chain:
            if inode != self._inode:
                self._offset, self._inode = 0, inode  # the next file, from its start
            if size == self._offset:
                continue  # nothing appended: the file need not be opened
            taken = self._read_file(path, inode)
            if taken is None:
                break  # not the file listed (rotated meanwhile): the next look goes on from here
            added += taken
        if added:
            self.changes += 1
        return added

    def _read_file(self, path: Path, inode: int) -> int | None:
        """The rows of ``path`` from the offset reached; None when it is no longer the file of ``inode``."""
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return None
        added = 0
        with f:
            stat = os.fstat(f.fileno())
            if stat.st_ino != inode:
                return None
            self._file = path
            # In chunks: a first look at a large file never holds all of it in memory.
            while self._offset < stat.st_size:
                f.seek(self._offset)
                data = f.read(min(READ_CHUNK, stat.st_size - self._offset))
                end = data.rfind(b"\n") + 1
                if end == 0:
                    if len(data) < READ_CHUNK:
                        break  # the last line is still being written
                    end = len(data)  # no newline in a whole chunk: not a metric row
                added += self._take(data[:end].decode("utf-8", errors="replace").splitlines(), self._offset == 0)
                self._offset += end
        return added

    def _take(self, lines: list[str], at_start: bool) -> int:
        if at_start and lines and lines[0] == METRIC_LOG_HEADER:
            lines = lines[1:]
        # A metric row has four fields and a finite, non-negative absolute_error. y_true and
        # y_pred are read only for the last `recent` lines (NaN where they do not parse).
        keep_from = len(lines) - self.recent
        if keep_from > 0:
            self._y_true.clear()
            self._y_pred.clear()
            self._errors.clear()
        errors: list[float] = []
        last_id = None
        for index, line in enumerate(lines):
            try:
                fields = split_line(line)
                error = parse_error(fields)
            except RowFormatError:
                self.skipped_lines += 1
                log.warning("skipping a line of %s that is not a metric row: %r", self.path, line[:80])
                continue
            errors.append(error)
            last_id = fields[ID]
            if index >= keep_from:
                self._y_true.append(parse_number(fields[Y_TRUE]))
                self._y_pred.append(parse_number(fields[Y_PRED]))
                self._errors.append(error)
        if last_id is not None:
            self.last_id = last_id
        self.distribution.add(np.array(errors))
        return len(errors)
