"""metric_log.csv rotated by size (METRIC_LOG_MAX_BYTES): at a batch boundary, every row in exactly one
file with the header in each, the statistics going on across files and rebuilt from them (with a
snapshot or without), a rotation cut short by a crash finished at start-up, a repair that writes back
only the current file's rows, the rows feed by generation, merge over the rotated files."""

from pathlib import Path

import pandas as pd
import pytest

from services.common.contracts.rows_feed import RowsChunk
from services.common.files import METRIC_LOG, METRIC_SNAPSHOT, rotated_metric_log, rotated_metric_logs
from services.common.metric_rows import METRIC_LOG_HEADER
from services.metric_api import merge
from services.metric_api.ledger import MetricLedger
from services.metric_api.rows_feed import read_chunk
from services.metric_api.stats import QualityStats
from tests.quality import differences, expected_window
from tests.unit.metric_api.test_ledger import pairs, sid

BASELINE = 120.0
MAX_BYTES = 2000  # about 50 rows a file


def opened(logs: Path, now: float = 0.0, max_bytes: int = MAX_BYTES) -> tuple[MetricLedger, QualityStats]:
    ledger, quality = MetricLedger(logs, log_max_bytes=max_bytes), QualityStats(BASELINE)
    ledger.open(quality, now)
    return ledger, quality


def log_files(logs: Path) -> list[Path]:
    """Every file of the log, oldest first: as `ls logs/metric_log*.csv` lists them."""
    return sorted(logs.glob("metric_log*.csv"))


def all_rows(logs: Path) -> pd.DataFrame:
    """The files read by pandas, one after the other."""
    return pd.concat([pd.read_csv(path, dtype={"id": str}) for path in log_files(logs)], ignore_index=True)


def record_in_batches(ledger: MetricLedger, quality: QualityStats, first: int, last: int, batch: int = 7) -> None:
    for start in range(first, last + 1, batch):
        quality.add_rows(ledger.record(pairs(start, min(last, start + batch - 1)), now=1.0).rows, 1.0)


def assert_as_pandas(quality: QualityStats, rows: pd.DataFrame) -> None:
    summary = quality.summary(now=10_000.0)
    assert summary["windows"]["all"]["count"] == len(rows)
    for name, expected in {"all": rows, "last_100": rows.tail(100), "last_1000": rows.tail(1000)}.items():
        assert not differences(summary["windows"][name], expected_window(expected, BASELINE)), name
    assert summary["last_id"] == rows["id"].iloc[-1]


def test_a_full_file_is_renamed_with_its_generation_and_every_row_is_in_one_file_once(tmp_path: Path) -> None:
    ledger, quality = opened(tmp_path)
    record_in_batches(ledger, quality, 1, 400)
    files = log_files(tmp_path)
    assert len(files) >= 5 and files[-1].name == METRIC_LOG
    assert [path.name for path in files[:-1]] == [f"metric_log.{n:06d}.csv" for n in range(1, len(files))]
    assert ledger.generation == len(files) and ledger.rotations == len(files) - 1
    for path in files:
        assert path.read_text().splitlines()[0] == METRIC_LOG_HEADER
    for path in files[:-1]:  # rotated only at a batch boundary, once over the limit
        size = path.stat().st_size
        assert MAX_BYTES < size < MAX_BYTES + 7 * 60
    rows = all_rows(tmp_path)
    assert list(rows["id"]) == [sid(n) for n in range(1, 401)]
    assert_as_pandas(quality, rows)  # the statistics went on across files, nothing reset
    assert ledger.record(pairs(1, 400), now=2.0).duplicates == 800  # and the state still knows every id
    ledger.close()


@pytest.mark.parametrize("snapshot_at", [None, 120, 390])
def test_a_restart_rebuilds_the_statistics_of_every_file_kept(
    tmp_path: Path, snapshot_at: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a snapshot the rotated files are read, oldest first, then metric_log.csv; with one made
    before rotations (or after), it goes on from its file and offset through every later file."""
    ledger, quality = opened(tmp_path)
    record_in_batches(ledger, quality, 1, snapshot_at or 1)
    if snapshot_at is not None:
        snapshot = ledger.snapshot(quality)
        assert snapshot is not None
        ledger.write_snapshot(snapshot)
    record_in_batches(ledger, quality, (snapshot_at or 1) + 1, 400)
    ledger.close()
    assert len(log_files(tmp_path)) >= 5

    caplog.set_level("INFO")
    ledger, restarted = opened(tmp_path, 3.0)
    assert_as_pandas(restarted, all_rows(tmp_path))
    if snapshot_at is not None:
        assert (tmp_path / METRIC_SNAPSHOT).exists() and "started from" in caplog.text
        assert "cannot start from the snapshot" not in caplog.text
    assert ledger.record(pairs(400, 401), now=4.0).duplicates == 2
    ledger.close()


def test_a_snapshot_of_a_rotated_file_deleted_since_means_the_full_read_of_the_files_kept(tmp_path: Path) -> None:
    ledger, quality = opened(tmp_path)
    record_in_batches(ledger, quality, 1, 30)
    snapshot = ledger.snapshot(quality)
    assert snapshot is not None
    ledger.write_snapshot(snapshot)
    record_in_batches(ledger, quality, 31, 300)
    ledger.close()
    rotated_metric_log(tmp_path, 1).unlink()  # the user archived the oldest file elsewhere

    ledger, restarted = opened(tmp_path, 3.0)
    assert_as_pandas(restarted, all_rows(tmp_path))  # the rows of the files kept: what a full read can know
    assert ledger.record(pairs(1, 1), now=4.0).duplicates == 2  # no row written again: not a repair
    assert not rotated_metric_log(tmp_path, 1).exists()
    ledger.close()


@pytest.mark.parametrize("new_file", ["missing", "header only"])
def test_a_rotation_cut_short_after_its_rename_is_finished_at_start_up(tmp_path: Path, new_file: str) -> None:
    """The crash points between the rename and the commit of the next generation: the rotated file is
    whole, metric_log.csv missing or just a header, the state still at the old generation and its rows."""
    ledger, quality = opened(tmp_path, max_bytes=0)
    record_in_batches(ledger, quality, 1, 60)
    ledger.close()
    (tmp_path / METRIC_LOG).rename(rotated_metric_log(tmp_path, 1))  # the rename done, then the crash
    if new_file == "header only":
        (tmp_path / METRIC_LOG).write_text(METRIC_LOG_HEADER + "\n")

    ledger, restarted = opened(tmp_path)
    assert ledger.generation == 2
    assert (tmp_path / METRIC_LOG).read_text() == METRIC_LOG_HEADER + "\n"  # no row written back: none lost either
    assert_as_pandas(restarted, all_rows(tmp_path))
    assert ledger.record(pairs(1, 60), now=2.0).duplicates == 120
    record_in_batches(ledger, restarted, 61, 200)
    assert list(all_rows(tmp_path)["id"]) == [sid(n) for n in range(1, 201)]
    ledger.close()


def test_a_current_file_deleted_after_rotations_gets_back_only_its_own_rows(tmp_path: Path) -> None:
    ledger, quality = opened(tmp_path)
    record_in_batches(ledger, quality, 1, 200)
    in_current = len(pd.read_csv(tmp_path / METRIC_LOG))
    assert 0 < in_current < 200
    (tmp_path / METRIC_LOG).unlink()
    assert ledger.changed() is not None
    ledger.open(QualityStats(BASELINE), 2.0)  # what the service's repair does
    rows = all_rows(tmp_path)
    assert list(rows["id"]) == [sid(n) for n in range(1, 201)]  # each once: the rotated files' rows are not copied
    assert len(pd.read_csv(tmp_path / METRIC_LOG)) == in_current
    ledger.close()


def test_rows_feed_serves_each_generation_and_says_which(tmp_path: Path) -> None:
    ledger, quality = opened(tmp_path)
    record_in_batches(ledger, quality, 1, 120)
    ledger.close()
    rotated = rotated_metric_logs(tmp_path)
    current = ledger.generation
    first = read_chunk(rotated[0][1], 0, generation=rotated[0][0], current=current)
    assert first is not None and first.data == rotated[0][1].read_bytes() and not first.finished
    end = read_chunk(rotated[0][1], first.next_offset, generation=rotated[0][0], current=current)
    assert end is not None and end.finished  # a rotated file read to its end: go on with the next
    now = read_chunk(tmp_path / METRIC_LOG, 0, generation=current, current=current)
    assert now is not None and not now.finished
    again = read_chunk(tmp_path / METRIC_LOG, now.next_offset, generation=current, current=current)
    assert again is not None and again.data == b"" and not again.finished  # the current file may grow
    parsed = RowsChunk.of_answer(first.headers(), first.data)
    assert (parsed.generation, parsed.current_generation) == (rotated[0][0], current)


def test_merge_reads_each_shards_rotated_files_and_each_file_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shards = [tmp_path / "shard0", tmp_path / "shard1"]
    for number, logs in enumerate(shards):
        ledger, quality = opened(logs)
        record_in_batches(ledger, quality, 1000 * number + 1, 1000 * number + 150)
        ledger.close()
        assert rotated_metric_logs(logs)
    out = tmp_path / "merged.csv"
    named = [shards[0] / METRIC_LOG, *log_files(shards[1])]  # a glob lists the rotated files too: read once
    assert merge.main([str(out), *map(str, named)]) == 0
    merged = pd.read_csv(out, dtype={"id": str})
    assert list(merged["id"]) == [sid(n) for n in [*range(1, 151), *range(1001, 1151)]]
    assert "found twice" not in capsys.readouterr().out


def test_a_rotation_that_fails_keeps_the_batch_and_the_next_batch_repairs_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, _ = opened(tmp_path)
    real_replace = Path.replace

    def full_disk(path: Path, target: Path) -> Path:
        raise OSError(28, f"No space left on device: {path} -> {target}")

    monkeypatch.setattr(Path, "replace", full_disk)
    recorded = ledger.record(pairs(1, 60), now=1.0)  # over the limit at once: the rotation fails
    assert len(recorded.rows) == 60 and recorded.rotated is None
    assert "cannot rotate" in (ledger.changed() or "")
    monkeypatch.setattr(Path, "replace", real_replace)
    ledger.open(QualityStats(BASELINE), 2.0)  # the service's repair, before the next batch
    assert ledger.record(pairs(61, 62), now=2.0).rotated == rotated_metric_log(tmp_path, 1)
    assert list(all_rows(tmp_path)["id"]) == [sid(n) for n in range(1, 63)]
    ledger.close()


def test_rotated_files_left_from_another_state_are_not_read_nor_overwritten(tmp_path: Path) -> None:
    stale = rotated_metric_log(tmp_path, 1)
    stale.write_text(METRIC_LOG_HEADER + "\n1600000000.000001,1.0,2.0,1.0\n")
    ledger, quality = opened(tmp_path)
    assert ledger.generation == 1 and quality.count == 0  # a fresh state: not a rotation cut short
    ledger.record(pairs(1, 60), now=1.0)  # full: the rotation is refused, the batch kept
    assert "already exists" in (ledger.changed() or "")
    assert stale.read_text().count("\n") == 2
    ledger.close()
