"""``metric_log.csv``: the durable record of joined rows, one per id, appended with fsync.

The file is kept open for appending, so a file deleted, moved away (rotated) or truncated
under it would silently swallow every later row: ``changed()`` tells, before each append,
whether the path still names the file being written, as long as it was left (the ledger then
makes the file whole again from the state).
"""

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from services.common.files import fsync_dir, still_there
from services.common.metric_rows import METRIC_LOG_HEADER as CSV_HEADER
from services.common.metric_rows import MetricRow, RowFormatError, format_rows, parse_row

log = logging.getLogger(__name__)


def drop_torn_tail(path: Path) -> None:
    """Cut the file back to just after its last newline (to nothing if it has none)."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            newline = f.read(end - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        if keep == size:
            return
        f.seek(keep)
        log.warning("%s ends in a partial line (%r); removing it", path, f.read(80))
        f.truncate(keep)
        os.fsync(f.fileno())


def read_rows(path: Path, offset: int = 0) -> Iterator[MetricRow]:
    """Every row of a metric log from byte ``offset`` (0: after the header; else the start of a
    line), read from disk; MetricLogError naming the file and line at a line that is no row."""
    with path.open("rb") as f:
        if offset:
            f.seek(offset)
        else:
            f.readline()  # the header
        for number, raw in enumerate(f, start=2):
            line = raw.decode("utf-8", errors="replace")
            try:
                yield parse_row(line)
            except RowFormatError as exc:
                where = f"line {number}" if not offset else f"a line after byte {offset}"
                raise MetricLogError(
                    f"{path} {where} is not a metric row ({exc}): {line[:80]!r}; fix or remove that line and start again"
                ) from None


class MetricLogError(RuntimeError):
    """The CSV cannot be used as it is; the message names the file and what to do."""


class MetricLogChanged(MetricLogError):
    """The path no longer names the file being written, as it was left; the message says how."""


class MetricLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None
        self._written: tuple[int, int, int] | None = None  # device, inode and size after our last write
        self._damaged: str | None = None  # the file changed while rows were being appended to it

    def open_for_append(self) -> None:
        """Create the file with its header, or check the header of the one there; then keep it open for appends.

        A last line cut short by a crash mid-append is removed first: its messages were
        never acked, so the broker delivers them again and the row is written whole.
        """
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            drop_torn_tail(self.path)
        if not self.path.exists() or self.path.stat().st_size == 0:
            with self.path.open("w", encoding="utf-8") as f:
                f.write(CSV_HEADER + "\n")
                f.flush()
                os.fsync(f.fileno())
        with self.path.open(encoding="utf-8", errors="replace") as f:
            header = f.readline().rstrip("\n")
        if header != CSV_HEADER:
            raise MetricLogError(
                f"{self.path} starts with {header[:80]!r}, not the header {CSV_HEADER!r}: "
                "move the file away (or point LOGS_DIR elsewhere) and start again"
            )
        self._file = self.path.open("a", encoding="utf-8")
        self._damaged = None
        self._remember_written()

    def _remember_written(self, expected_size: int | None = None) -> None:
        assert self._file is not None
        stat = os.fstat(self._file.fileno())
        if expected_size is not None and stat.st_size != expected_size:
            # Truncated (or written to) between our last look and this append: from now on the
            # size alone would not tell, so it is remembered until the file is made whole.
            self._damaged = f"{self.path} changed size while rows were appended ({stat.st_size} bytes, not {expected_size})"
        self._written = (stat.st_dev, stat.st_ino, stat.st_size)

    def set_aside(self, why: str) -> Path:
        """Close the file and move it out of the way, kept for the user: ``<name>.<why>-<time>``."""
        self.close()
        aside = self.path.with_name(f"{self.path.name}.{why}-{time.strftime('%Y%m%dT%H%M%S')}")
        self.path.replace(aside)
        return aside

    def changed(self) -> str | None:
        """How the file at ``path`` differs from the one this log writes, as it was left by the
        last write: deleted or moved away, replaced, truncated, written to by someone else. None
        while it is the same (or the log is not open)."""
        if self._written is None:
            return None
        if self._damaged is not None:
            return self._damaged
        device, inode, size = self._written
        stat, problem = still_there(self.path, (device, inode))
        if stat is None:
            return problem
        if stat.st_size < size:
            return f"{self.path} was truncated (from {size} to {stat.st_size} bytes)"
        if stat.st_size > size:
            return f"{self.path} was written to by another program ({stat.st_size - size} bytes this service did not write)"
        return None

    def rows(self, offset: int = 0) -> Iterator[MetricRow]:
        """Every row of the file from byte ``offset`` (0: after the header, which ``open_for_append()``
        checked; else the start of a line), read from disk."""
        return read_rows(self.path, offset)

    def size(self) -> int:
        """The file's size as this log's last write left it (0 when not open)."""
        return self._written[2] if self._written is not None else 0

    def rotate(self, rotated: Path) -> None:
        """Rename the file (every row of it durable) to ``rotated``, begin a new one with the header,
        and make both names durable (the folder fsynced) before returning; left open for appends.
        A crash between the rename and the new file leaves ``rotated`` whole and the path missing
        (or just a header): the ledger finishes the rotation at start-up."""
        if rotated.exists():
            raise MetricLogError(f"cannot rotate {self.path}: {rotated} already exists; move it away and start again")
        self.close()
        self.path.replace(rotated)
        self.open_for_append()
        fsync_dir(self.path.parent)

    def position(self) -> tuple[int, int, int] | None:
        """(device, inode, size) of the file as this log's last write left it, or None when not open."""
        return self._written

    def append(self, rows: list[MetricRow]) -> None:
        """Append rows and make them durable (fsync) before returning."""
        if self._file is None:
            raise MetricLogError(f"{self.path} is not open")
        text = format_rows(rows)
        expected_size = self._written[2] + len(text.encode()) if self._written is not None else None
        try:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._remember_written(expected_size)
        except OSError:
            # The file may now end in a partial line; reopening repairs it.
            self.close()
            raise

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self._written = None
        self._damaged = None


def append_with_header(path: Path, header: str, lines: list[str]) -> None:
    """Append lines to a CSV (writing its header first if the file is new) and fsync."""
    if path.exists():
        drop_torn_tail(path)
    with path.open("a", encoding="utf-8") as f:
        if f.tell() == 0:
            f.write(header + "\n")
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
