"""Following the rows of every shard of the join over HTTP (``GET /metrics/rows`` of each
metric_api in METRIC_API_URL): the charts and the summary over their union, with no shared
folder, so the shards may run on other machines (docs/cluster.md, "One view over the shards")."""

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.common.contracts.rows_feed import REPLACED_STATUS, ROWS_ROUTE, RowsChunk
from services.common.metric_rows import METRIC_LOG_HEADER, MetricRow, RowFormatError, parse_row
from services.common.row_windows import RowWindows
from services.common.settings import ALL_EXACT_ROWS
from services.common.snapshots import Snapshot, SnapshotUnusable, load_windows, save_windows
from services.plot_api.tail import RECENT_ROWS_DRAWN, MetricLogTail

log = logging.getLogger(__name__)

LOOKS_PER_READ = 16  # answers of at most 4 MiB each, per shard and per read: a first read catches up over a few


@dataclass
class ShardCursor:
    """How far plot_api has read one shard's metric_log.csv."""

    url: str
    offset: int = 0
    log_id: str | None = None
    generation: int | None = None  # of the file being read (X-Log-Generation); None: a shard from before rotation
    rows: int = 0  # rows read from this shard
    problem: str | None = None  # why the last look failed, if it did


class ShardRowsTail(MetricLogTail):
    """The rows of every shard, as ``MetricLogTail`` keeps one file's (the charts draw from it), and
    the statistics over their union (``union``: count, MAE, RMSE, percentiles... exact).

    Each look asks each shard for what its file gained since the last look. A shard that does not
    answer keeps what was read of it and is tried again at the next look; a shard whose file was
    replaced (a new X-Log-Id, or 416) makes everything read again from the start.
    """

    def __init__(
        self,
        urls: list[str],
        recent: int = RECENT_ROWS_DRAWN,
        timeout: float = 2.0,
        transport: httpx.BaseTransport | None = None,  # tests answer for the shards
        exact_rows: int = ALL_EXACT_ROWS,  # the union's percentiles: exact up to this many rows, then sketched
    ) -> None:
        self.shards = [ShardCursor(url.rstrip("/")) for url in urls]
        self.exact_rows = exact_rows
        self.union = RowWindows(exact_rows=exact_rows)
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=timeout, transport=transport)
        # Last: MetricLogTail's __init__ calls _start_over, which resets the above.
        super().__init__(Path("metric shards"), recent)  # no file of its own: read_new is overridden

    def describe(self) -> str:
        return "the metric shards at " + ", ".join(shard.url for shard in self.shards)

    def close(self) -> None:
        self._client.close()

    def _start_over(self, inode: int | None) -> None:
        """Everything read again from the start, from every shard (the charts' rows cannot lose one shard's)."""
        super()._start_over(inode)
        for shard in self.shards:
            shard.offset, shard.log_id, shard.generation, shard.rows = 0, None, None, 0
        self.union.reset()

    # -- snapshots: the shards' offsets and log ids (a shard whose file was replaced since says so
    # at the next look, and everything is read again), and the union's windows
    def save(self, snapshot: Snapshot) -> None:
        with self._lock:
            super().save(snapshot)
            save_windows(self.union, snapshot)

    def _position(self) -> dict[str, Any]:
        return {
            "shards": [[shard.url, shard.offset, shard.log_id, shard.rows, shard.generation] for shard in self.shards],
            "inode": None,
        }

    def _check_position(self, meta: dict[str, Any]) -> None:
        if [shard[0] for shard in meta["shards"]] != [shard.url for shard in self.shards]:
            raise SnapshotUnusable("made for other metric shards than METRIC_API_URL's")

    def load(self, snapshot: Snapshot) -> None:
        with self._lock:
            union = RowWindows(exact_rows=self.exact_rows)
            load_windows(union, snapshot)
            super().load(snapshot)
            self.union = union
            for shard, (_url, offset, log_id, rows, *generation) in zip(
                self.shards, snapshot.meta["tail"]["shards"], strict=True
            ):
                shard.offset, shard.log_id, shard.rows = offset, log_id, rows
                shard.generation = generation[0] if generation else None  # (a snapshot from before rotation has none)

    def read_new(self) -> int:
        """Take in the rows each shard appended since the last look; return how many."""
        with self._lock:
            added = 0
            for shard in self.shards:
                try:
                    added += self._read_shard(shard)
                    shard.problem = None
                except _Replaced:
                    log.warning("%s's metric_log.csv was replaced: reading every shard again from the start", shard.url)
                    self._start_over(None)
                    return 0
                except (httpx.HTTPError, ValueError) as exc:
                    if shard.problem is None:
                        log.warning("cannot read the rows of the metric shard at %s: %s", shard.url, exc)
                    shard.problem = f"{type(exc).__name__}: {exc}"
            if added:
                self.changes += 1
            return added

    def union_summary(self, now: float) -> dict[str, Any]:
        """The windows over every row read so far (``RowWindows.summary``), taken between looks."""
        with self._lock:
            return self.union.summary(now)

    def _read_shard(self, shard: ShardCursor) -> int:
        """What the shard's log gained since the last look: its generation read to the end, then (when it
        was rotated) the next from its start, and so on (services/common/contracts/rows_feed.py)."""
        added = 0
        for _ in range(LOOKS_PER_READ):
            params = {"offset": shard.offset}
            if shard.generation is not None or shard.offset == 0:
                params["generation"] = shard.generation or 0  # 0 at the start: the oldest generation kept
            answer = self._client.get(f"{shard.url}{ROWS_ROUTE}", params=params)
            if answer.status_code == REPLACED_STATUS:
                raise _Replaced
            answer.raise_for_status()
            chunk = RowsChunk.of_answer(answer.headers, answer.content)
            if shard.log_id is not None and chunk.log_id != shard.log_id:
                raise _Replaced
            shard.log_id, shard.generation = chunk.log_id, chunk.generation
            if chunk.finished and chunk.generation is not None:  # a rotated file read to its end: the next one
                shard.offset, shard.log_id, shard.generation = 0, None, chunk.generation + 1
                continue
            if chunk.next_offset == shard.offset:
                break
            lines = chunk.data.decode("utf-8", errors="replace").splitlines()
            at_start = shard.offset == 0
            taken = self._take(lines, at_start)
            self.union.add_history(_rows(lines[1:] if at_start and lines and lines[0] == METRIC_LOG_HEADER else lines))
            shard.offset, shard.rows, added = chunk.next_offset, shard.rows + taken, added + taken
        return added


class _Replaced(Exception):
    """A shard's metric_log.csv is another file than the one read so far."""


def _rows(lines: list[str]) -> list[MetricRow]:
    rows = []
    for line in lines:
        try:
            rows.append(parse_row(line))
        except RowFormatError:
            continue  # counted and logged by MetricLogTail._take
    return rows
