"""plot_api follows metric_log.csv across its rotation (METRIC_LOG_MAX_BYTES): the local tail by the
file's inode, the shards over HTTP by generation; every row read once, none missed, whether it looks
between every batch or seldom, and from a snapshot made before rotations."""

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from services.common.contracts.rows_feed import REPLACED_STATUS
from services.common.snapshots import Snapshot
from services.metric_api.ledger import MetricLedger
from services.metric_api.rows_feed import read_chunk
from services.metric_api.stats import QualityStats
from services.plot_api.shards import ShardRowsTail
from services.plot_api.tail import MetricLogTail
from tests.unit.metric_api.test_ledger import pairs

NOW = 1_700_000_000.0
MAX_BYTES = 2000  # about 50 rows a file


def writer(logs: Path) -> MetricLedger:
    ledger = MetricLedger(logs, log_max_bytes=MAX_BYTES)
    ledger.open(QualityStats(None), 0.0)
    return ledger


def all_rows(logs: Path) -> pd.DataFrame:
    return pd.concat([pd.read_csv(path, dtype={"id": str}) for path in sorted(logs.glob("metric_log*.csv"))], ignore_index=True)


def write(ledger: MetricLedger, first: int, last: int, batch: int = 9) -> None:
    for start in range(first, last + 1, batch):
        ledger.record(pairs(start, min(last, start + batch - 1)), now=1.0)


@pytest.mark.parametrize("looks_every", [1, 4, 1000])
def test_the_local_tail_reads_every_row_once_across_rotations(tmp_path: Path, looks_every: int) -> None:
    ledger = writer(tmp_path)
    tail = MetricLogTail(tmp_path / "metric_log.csv", recent=50)
    for n, start in enumerate(range(1, 600, 9)):
        write(ledger, start, start + 8)
        if n % looks_every == 0:
            tail.read_new()
    tail.read_new()
    ledger.close()
    rows = all_rows(tmp_path)
    assert ledger.rotations >= 8 and len(rows) == 603
    assert tail.count == len(rows) and tail.skipped_lines == 0
    assert tail.last_id == rows["id"].iloc[-1]
    assert np.allclose(tail.recent_errors(), rows["absolute_error"].tail(50))
    fresh = MetricLogTail(tmp_path / "metric_log.csv")  # a start without snapshot: every file kept
    assert fresh.read_new() == len(rows)


def test_the_local_tail_goes_on_from_a_snapshot_of_a_file_rotated_since(tmp_path: Path) -> None:
    ledger = writer(tmp_path)
    write(ledger, 1, 30)
    tail = MetricLogTail(tmp_path / "metric_log.csv")
    tail.read_new()
    snapshot = Snapshot({})
    tail.save(snapshot)
    write(ledger, 31, 400)  # rotated several times since
    ledger.close()
    restarted = MetricLogTail(tmp_path / "metric_log.csv")
    restarted.load(snapshot)
    assert restarted.read_new() == 400 - 30
    assert restarted.count == 400


def serve_ledgers(ledgers: dict[str, MetricLedger], max_bytes: int = 1500) -> httpx.MockTransport:
    """Each shard's GET /metrics/rows, as metric_api answers it (the file chosen as its route chooses it)."""

    def handle(request: httpx.Request) -> httpx.Response:
        ledger = ledgers[request.url.host]
        offset, generation = int(request.url.params["offset"]), request.url.params.get("generation")
        found = ledger.file_to_read(int(generation) if generation is not None else None, offset)
        chunk = None if found is None else read_chunk(found[1], offset, max_bytes, found[0], ledger.generation)
        if chunk is None:
            return httpx.Response(REPLACED_STATUS)
        return httpx.Response(200, content=chunk.data, headers=chunk.headers())

    return httpx.MockTransport(handle)


def test_the_shards_are_followed_across_rotations_by_generation(tmp_path: Path) -> None:
    ledgers = {"s0": writer(tmp_path / "s0"), "s1": writer(tmp_path / "s1")}
    tail = ShardRowsTail(["http://s0", "http://s1"], transport=serve_ledgers(ledgers))
    read = 0
    for n, start in enumerate(range(1, 500, 9)):
        write(ledgers["s0"], start, start + 8)
        if n % 3 == 0:
            write(ledgers["s1"], 10_000 + start, 10_000 + start + 8)
        if n % 5 == 0:
            read += tail.read_new()
            assert tail.count == read  # never started over
            if n == 25:  # plot_api restarted from its snapshot
                snapshot = Snapshot({})
                tail.save(snapshot)
                tail = ShardRowsTail(["http://s0", "http://s1"], transport=serve_ledgers(ledgers))
                tail.load(snapshot)
    while added := tail.read_new():
        read += added
    rows = [all_rows(tmp_path / shard) for shard in ("s0", "s1")]
    assert ledgers["s0"].rotations >= 7 and ledgers["s1"].rotations >= 2
    assert tail.count == read == sum(map(len, rows))
    assert [shard.rows for shard in tail.shards] == [len(r) for r in rows]
    union = tail.union_summary(NOW)["windows"]["all"]
    errors = pd.concat(rows)["absolute_error"]
    assert union["count"] == len(errors) and union["mae"] == pytest.approx(errors.mean(), rel=1e-12)
    for ledger in ledgers.values():
        ledger.close()


def test_a_follower_behind_a_deleted_rotated_file_reads_again_what_is_kept(tmp_path: Path) -> None:
    ledgers = {"s0": writer(tmp_path / "s0")}
    write(ledgers["s0"], 1, 20)
    tail = ShardRowsTail(["http://s0"], transport=serve_ledgers(ledgers))
    assert tail.read_new() == 20
    write(ledgers["s0"], 21, 300)
    (tmp_path / "s0" / "metric_log.000001.csv").unlink()  # archived away before plot_api finished it
    tail.read_new()  # the 416: everything read again
    while tail.read_new():
        pass
    assert tail.count == len(all_rows(tmp_path / "s0"))
    ledgers["s0"].close()
