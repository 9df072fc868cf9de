"""Reading metric_log.csv from a byte offset, whole lines only: what ``GET /metrics/rows`` serves
(plot_api follows every shard's rows with it, wherever the shards run)."""

import os
from dataclasses import dataclass
from pathlib import Path

ROWS_MAX_BYTES = 4 << 20  # at most this much of the file in one answer


@dataclass(frozen=True)
class LogChunk:
    data: bytes  # whole lines (each ends in a newline); empty when nothing new
    next_offset: int  # where the next read starts
    log_id: str  # which file this is: another after the file was replaced


def read_chunk(path: Path, offset: int, max_bytes: int = ROWS_MAX_BYTES) -> LogChunk | None:
    """The whole lines of ``path`` from ``offset``, at most ``max_bytes`` of them (at least one line,
    however long); None when ``offset`` is past the end (the file was replaced or cut)."""
    try:
        with path.open("rb") as f:
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
    except FileNotFoundError:
        return None if offset > 0 else LogChunk(b"", 0, "none")
    return LogChunk(data[:end], offset + end, log_id)
