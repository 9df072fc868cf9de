"""Reading metric_log.csv from a byte offset, whole lines only: what ``GET /metrics/rows`` serves
(services/common/contracts/rows_feed.py; plot_api follows every shard's rows with it, wherever the shards run),
of the current file or, after rotation, of a rotated one by its generation."""

import os
from pathlib import Path
from typing import BinaryIO

from services.common.contracts.rows_feed import ROWS_MAX_BYTES, RowsChunk


def read_chunk(
    path: Path, offset: int, max_bytes: int = ROWS_MAX_BYTES, generation: int | None = None, current: int | None = None
) -> RowsChunk | None:
    """The whole lines of ``path`` from ``offset``, at most ``max_bytes`` of them (at least one line,
    however long); None when ``offset`` is past the end (the file was replaced or cut)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return (
            None
            if offset > 0
            else RowsChunk(data=b"", next_offset=0, log_id="none", generation=generation, current_generation=current)
        )
    return read_open_chunk(f, offset, max_bytes, generation, current)


def read_open_chunk(
    f: BinaryIO, offset: int, max_bytes: int = ROWS_MAX_BYTES, generation: int | None = None, current: int | None = None
) -> RowsChunk | None:
    """``read_chunk`` of a file opened already (``generation`` of the log's ``current``); closes it."""
    with f:
        stat = os.fstat(f.fileno())
        log_id = f"{stat.st_dev}:{stat.st_ino}"
        if offset > stat.st_size:
            return None
        f.seek(offset)
        data = f.read(min(max_bytes, stat.st_size - offset))
        end = data.rfind(b"\n") + 1
        while end == 0 and offset + len(data) < stat.st_size:  # one line longer than max_bytes: take it whole
            data += f.read(min(max_bytes, stat.st_size - offset - len(data)))
            end = data.rfind(b"\n") + 1
    return RowsChunk(data=data[:end], next_offset=offset + end, log_id=log_id, generation=generation, current_generation=current)
