"""Following ``metric_log.csv``: read only what was appended since the last look."""

import logging
import os
from array import array
from pathlib import Path

import numpy as np

from services.common.files import METRIC_LOG_HEADER

log = logging.getLogger(__name__)


class MetricLogTail:
    """The ``absolute_error`` column of the CSV, kept up to date by reading new complete lines.

    A line still being written (no newline yet) is left for the next look. If the file is
    replaced or truncated, it is read again from the start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._inode: int | None = None
        self._errors = array("d")
        self.last_id: str | None = None
        self.skipped_lines = 0

    @property
    def count(self) -> int:
        return len(self._errors)

    def errors(self) -> np.ndarray:
        return np.frombuffer(self._errors, dtype=float).copy()

    def read_new(self) -> int:
        """Take in the rows appended since the last call; return how many."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return 0
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self._offset, self._inode, self._errors, self.last_id = 0, stat.st_ino, array("d"), None
        if stat.st_size == self._offset:
            return 0
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read(stat.st_size - self._offset)
        end = data.rfind(b"\n") + 1
        if end == 0:
            return 0
        lines = data[:end].decode("utf-8", errors="replace").splitlines()
        if self._offset == 0 and lines and lines[0] == METRIC_LOG_HEADER:
            lines = lines[1:]
        self._offset += end
        before = len(self._errors)
        for line in lines:
            fields = line.split(",")
            try:
                self._errors.append(float(fields[3]))
            except (IndexError, ValueError):
                self.skipped_lines += 1
                log.warning("skipping a line of %s that is not a metric row: %r", self.path, line[:80])
                continue
            self.last_id = fields[0]
        return len(self._errors) - before
