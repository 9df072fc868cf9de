"""metric_api starts from its snapshot and the CSV's tail past it, with every statistic what pandas
computes on the whole CSV; a missing or damaged snapshot, or one of another CSV, means the full read."""

import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from services.common.files import METRIC_LOG, METRIC_SNAPSHOT
from services.common.metric_rows import MetricRow
from services.metric_api import ledger as ledger_module
from services.metric_api.csvlog import read_rows
from services.metric_api.ledger import MetricLedger
from services.metric_api.stats import QualityStats
from tests.quality import differences, expected_window
from tests.unit.metric_api.test_ledger import halves, pairs

BASELINE = 120.0


def opened(logs: Path, now: float) -> tuple[MetricLedger, QualityStats]:
    ledger, quality = MetricLedger(logs), QualityStats(BASELINE)
    ledger.open(quality, now)
    return ledger, quality


def assert_as_pandas(quality: QualityStats, logs: Path, *, versions: bool = True) -> None:
    rows = pd.read_csv(logs / METRIC_LOG, dtype={"id": str})
    summary = quality.summary(now=10_000.0)
    assert summary["windows"]["all"]["count"] == len(rows)
    for name, expected in {"all": rows, "last_100": rows.tail(100), "last_1000": rows.tail(1000)}.items():
        assert not differences(summary["windows"][name], expected_window(expected, BASELINE)), name
    if versions:  # (the model versions are the state's: a CSV edited by hand is not theirs)
        assert not differences(summary["by_model_version"]["unknown"], expected_window(rows, BASELINE))
    assert summary["last_id"] == rows["id"].iloc[-1]
    assert [row.id for row in quality.last(5)] == list(rows["id"].tail(5))


def snapshot_then_more(logs: Path) -> None:
    """1,200 rows, a snapshot, 300 rows more (the tail), stopped."""
    ledger, quality = opened(logs, 0.0)
    quality.add_rows(ledger.record(pairs(1, 1200), now=1.0).rows, 1.0)
    snapshot = ledger.snapshot(quality)
    assert snapshot is not None
    ledger.write_snapshot(snapshot)
    quality.add_rows(ledger.record(pairs(1201, 1500), now=2.0).rows, 2.0)
    ledger.close()


def test_a_restart_reads_the_snapshot_and_only_the_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot_then_more(tmp_path)
    read_from: list[int] = []

    def spied(path: Path, offset: int = 0) -> Iterator[MetricRow]:
        read_from.append(offset)
        return read_rows(path, offset)

    monkeypatch.setattr(ledger_module, "read_rows", spied)
    ledger, quality = opened(tmp_path, 3.0)
    header_and_1200_rows = sum(len(line) for line in (tmp_path / METRIC_LOG).read_text().splitlines(keepends=True)[:1201])
    assert read_from == [header_and_1200_rows]
    assert_as_pandas(quality, tmp_path)
    assert "snapshot" not in caplog.text  # used, no complaint
    assert ledger.record(pairs(1500, 1500), now=4.0).duplicates == 2  # the state is whole as ever
    ledger.close()


def test_a_snapshot_saved_mid_batch_stream_and_the_rows_of_a_crash_come_back_once(tmp_path: Path) -> None:
    snapshot_then_more(tmp_path)
    with (tmp_path / METRIC_LOG).open("a") as f:  # appended, not committed: the crash
        f.write("1700000000.009999,1.0,2.0,1.0\n")
    ledger, quality = opened(tmp_path, 3.0)
    assert_as_pandas(quality, tmp_path)
    assert ledger.record(halves(("y_true", 9999, 1.0)), now=4.0).duplicates == 1
    ledger.close()


@pytest.mark.parametrize("damage", ["delete", "cut", "flip"])
def test_a_missing_or_damaged_snapshot_means_the_full_read(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    snapshot_then_more(tmp_path)
    path = tmp_path / METRIC_SNAPSHOT
    data = path.read_bytes()
    if damage == "delete":
        path.unlink()
    elif damage == "cut":
        path.write_bytes(data[: len(data) - 100])
    else:
        path.write_bytes(data[:-50] + bytes([data[-50] ^ 0x10]) + data[-49:])
    caplog.set_level(logging.WARNING)
    ledger, quality = opened(tmp_path, 3.0)
    assert_as_pandas(quality, tmp_path)
    if damage != "delete":
        assert "cannot start from the snapshot" in caplog.text and "is damaged" in caplog.text
    ledger.close()


def test_a_snapshot_of_another_csv_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    snapshot_then_more(tmp_path)
    csv = tmp_path / METRIC_LOG
    lines = csv.read_text().splitlines(keepends=True)
    lines[1200] = lines[1200].replace(",", ",1", 1)  # the row before the snapshot's offset, another y_true
    csv.unlink()
    csv.write_text("".join(lines))  # another file, which may well get the same inode number
    caplog.set_level(logging.WARNING)
    ledger, quality = opened(tmp_path, 3.0)
    assert_as_pandas(quality, tmp_path, versions=False)
    assert "cannot start from the snapshot" in caplog.text
    ledger.close()


def test_a_csv_that_lost_rows_past_the_snapshot_is_made_whole_and_read_whole(tmp_path: Path) -> None:
    snapshot_then_more(tmp_path)
    csv = tmp_path / METRIC_LOG
    lines = csv.read_text().splitlines(keepends=True)
    with csv.open("r+") as f:  # the same file, its last 100 rows cut off while stopped
        f.truncate(sum(len(line) for line in lines[:-100]))
    ledger, quality = opened(tmp_path, 3.0)
    assert len(csv.read_text().splitlines()) == 1501  # written back from the state
    assert_as_pandas(quality, tmp_path)
    ledger.close()
