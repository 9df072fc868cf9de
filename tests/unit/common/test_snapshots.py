"""Snapshots (services/common/snapshots.py): what is written is read back bit for bit; a file
damaged in any way, of another version or missing is refused with the reason, never half-read."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from services.common.metric_rows import MetricRow
from services.common.row_windows import RowWindows
from services.common.snapshots import Snapshot, SnapshotUnusable, load_windows, read_snapshot, save_windows, write_snapshot


def filled(rows: int, ring: int = 50) -> RowWindows:
    rng = np.random.default_rng(7)
    windows = RowWindows(baseline=150.0, ring_rows=ring)
    for start in range(0, rows, 37):
        windows.take(
            [
                MetricRow.of(f"1.{n:06d}", 100 + rng.normal(), 100 + rng.normal(scale=3))
                for n in range(start, min(rows, start + 37))
            ],
            at=float(start),
        )
    return windows


def test_windows_come_back_bit_for_bit(tmp_path: Path) -> None:
    windows = filled(500)
    snapshot = Snapshot({"offset": 1234})
    save_windows(windows, snapshot)
    write_snapshot(tmp_path / "s.snapshot", 1, snapshot)

    back = read_snapshot(tmp_path / "s.snapshot", 1)
    restored = RowWindows(baseline=150.0, ring_rows=50)
    load_windows(restored, back)
    assert back.meta["offset"] == 1234
    assert restored.summary(600.0) == windows.summary(600.0)  # every window, exactly
    more = [MetricRow.of("2.000001", 101.0, 99.0), MetricRow.of("2.000002", 98.0, 103.5)]
    windows.take(more, at=601.0)
    restored.take(more, at=601.0)
    assert restored.summary(601.0) == windows.summary(601.0)  # and they go on alike


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "damaged: .* bytes of arrays"),
        (lambda data: data[:-9] + bytes([data[-9] ^ 1]) + data[-8:], "checksum"),
        (lambda data: b"garbage" + data, "not a snapshot"),
        (lambda data: data.replace(b'"version": 1', b'"version": 9', 1), "version 9"),
        (lambda data: data.replace(b'"sha256"', b'"sha-256"', 1), "header is damaged"),
    ],
)
def test_a_damaged_snapshot_is_refused_with_the_reason(tmp_path: Path, damage: Callable[[bytes], bytes], reason: str) -> None:
    path = tmp_path / "s.snapshot"
    snapshot = Snapshot({})
    save_windows(filled(100), snapshot)
    write_snapshot(path, 1, snapshot)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SnapshotUnusable, match=reason):
        read_snapshot(path, 1)


def test_windows_without_a_row_come_back_too(tmp_path: Path) -> None:
    snapshot = Snapshot({})
    save_windows(RowWindows(baseline=None, ring_rows=50), snapshot)
    write_snapshot(tmp_path / "s.snapshot", 1, snapshot)
    restored = RowWindows(baseline=None, ring_rows=50)
    load_windows(restored, read_snapshot(tmp_path / "s.snapshot", 1))
    assert restored.count == 0 and restored.summary(1.0) == RowWindows(baseline=None, ring_rows=50).summary(1.0)


def test_a_missing_snapshot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SnapshotUnusable, match="does not exist"):
        read_snapshot(tmp_path / "none.snapshot", 1)


def test_a_snapshot_of_another_baseline_is_refused() -> None:
    snapshot = Snapshot({})
    save_windows(filled(100), snapshot)
    with pytest.raises(SnapshotUnusable, match="baseline"):
        load_windows(RowWindows(baseline=140.0, ring_rows=50), snapshot)
