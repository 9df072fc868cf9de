"""The snapshot holds the segments (every tracked value, ``(other)``, the Misra–Gries counters) and
the buckets by prediction time: loaded, they are what was saved, and a start from the snapshot and
the tail is what the full rebuild from the state gives, without reading the state's older rows."""

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.common.files import METRIC_SNAPSHOT
from services.common.messages import LabelMessage, PredictionMessage
from services.common.metric_rows import MetricRow
from services.common.snapshots import Snapshot, read_snapshot, write_snapshot
from services.metric_api.join import Kind
from services.metric_api.ledger import SNAPSHOT_VERSION, MetricLedger
from services.metric_api.segments import OTHER, SegmentBook
from services.metric_api.store import SqliteHalfStore
from services.metric_api.where_when import SegmentedStats, WhereWhenConfig
from tests.unit.metric_api.test_ledger import sid

T0 = 1_700_000_000.0
BASELINE = 150.0
CONFIG = WhereWhenConfig(("region", "channel"), values_max=3, bucket_s=300.0, buckets_kept=48)


def same(actual: Any, expected: Any, where: str = "") -> list[str]:
    """Where two summaries differ: numbers to 1e-12 (relative), everything else exactly, in the same order."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or list(actual) != list(expected):
            return [f"{where}: keys {list(actual) if isinstance(actual, dict) else actual} != {list(expected)}"]
        return [d for key in expected for d in same(actual[key], expected[key], f"{where}.{key}")]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: {actual} != {expected}"]
        return [d for i, (a, e) in enumerate(zip(actual, expected, strict=True)) for d in same(a, e, f"{where}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, float | int):
        return [] if math.isclose(actual, expected, rel_tol=1e-12, abs_tol=1e-12) else [f"{where}: {actual} != {expected}"]
    return [] if actual == expected and type(actual) is type(expected) else [f"{where}: {actual!r} != {expected!r}"]


def views(core: SegmentedStats, now: float) -> dict[str, Any]:
    return {"segments": core.segments.summary(), "by_time": core.by_time.report(now)}


def skewed_rows(n: int, seed: int, start: int = 0) -> list[MetricRow]:
    """Rows of many regions (a few frequent, most rare, some frequent only late) and two channels."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(25, 347, n).astype(float)
    y_pred = y_true + rng.normal(0, 40, n)
    late = start + np.arange(n) > 1500
    region = np.where(rng.random(n) < 0.6, rng.integers(0, 4, n), rng.integers(4, 60, n))
    region = np.where(late & (rng.random(n) < 0.5), 99, region)  # a value frequent only late: promoted
    return [
        MetricRow.of(
            sid(start + i),
            float(t),
            float(p),
            predicted_at=T0 + (start + i) * 7.0,
            tags={"region": f"r{r}", **({"channel": "mobile"} if rng.random() < 0.3 else {})},
        )
        for i, (t, p, r) in enumerate(zip(y_true, y_pred, region, strict=True))
    ]


def fed(core: SegmentedStats, rows: list[MetricRow]) -> None:
    for start in range(0, len(rows), 61):
        batch = rows[start : start + 61]
        now = T0 + (int(batch[-1].id.split(".")[1])) * 7.0 + 5
        core.add_predictions([row.predicted_at or 0.0 for row in batch], now)
        core.add_rows(batch, now)


def test_segments_and_buckets_saved_and_loaded_are_what_they_were_and_go_on_alike(tmp_path: Path) -> None:
    core = SegmentedStats(BASELINE, CONFIG)
    rows = skewed_rows(3000, 1)  # most with the estimate of their error they were predicted with, for the segments' checks
    fed(core, [replace(row, estimated_error=30.0 + i % 17) if i % 4 else row for i, row in enumerate(rows)])
    core.add_predictions([T0 + 3000 * 7.0 + 1.0] * 5, T0 + 3000 * 7.0 + 5)  # waiting predictions: not kept
    books = core.segments.by_key
    assert books["region"].promoted > 0 and books["region"].other.count > 0 and books["region"].sketch  # all exercised
    assert core.by_time.dropped_written > 0  # buckets past the 48 kept
    snapshot = Snapshot({})
    core.save(snapshot)
    write_snapshot(tmp_path / "s", SNAPSHOT_VERSION, snapshot)
    loaded = SegmentedStats(BASELINE, CONFIG)
    loaded.load(read_snapshot(tmp_path / "s", SNAPSHOT_VERSION))
    assert loaded.where_when_loaded
    now = T0 + 3000 * 7.0 + 5
    expected = views(core, now)
    for bucket in expected["by_time"]["buckets"]:  # a loaded bucket counts only its predictions with a row
        bucket["predictions"] = bucket["labelled"]
        bucket["labelled_share"] = 1.0 if bucket["labelled"] else None
    expected["by_time"]["dropped"]["predictions"] = core.by_time.dropped_written
    assert not same(views(loaded, now), expected)
    assert expected["segments"]["channel"]["values"]["mobile"]["checked"]["rows"] == 300  # the checks were saved too
    for key, book in books.items():
        mine = loaded.segments.by_key[key]
        assert list(mine.sketch.items()) == list(book.sketch.items())  # the Misra–Gries counters, in order
        assert list(mine.tracked) == list(book.tracked) and mine.promoted == book.promoted
    # Both go on alike (promotions included): the same rows give the same segments.
    more = skewed_rows(1500, 2, start=3000)
    for stats in (core, loaded):
        for start in range(0, len(more), 61):
            stats.add_rows(more[start : start + 61], T0 + 4500 * 7.0)
    assert not same(loaded.segments.summary(), core.segments.summary())


def test_a_snapshot_of_other_segment_keys_leaves_the_segments_to_the_state() -> None:
    core = SegmentedStats(BASELINE, CONFIG)
    fed(core, skewed_rows(200, 3))
    snapshot = Snapshot({})
    core.save(snapshot)
    other = SegmentedStats(BASELINE, WhereWhenConfig(("region",), values_max=3, bucket_s=300.0, buckets_kept=48))
    other.load(snapshot)
    assert not other.where_when_loaded and other.count == 200 and other.segments.summary()["region"]["values"] == {}


def half(kind: Kind, row: MetricRow) -> tuple[Kind, LabelMessage | PredictionMessage]:
    if kind == "y_true":
        return kind, LabelMessage(id=row.id, body=row.y_true)
    return kind, PredictionMessage(id=row.id, body=row.y_pred, ts=row.predicted_at, tags=row.tags)


Halves = list[tuple[Kind, LabelMessage | PredictionMessage]]


def recorded(ledger: MetricLedger, core: SegmentedStats, items: Halves, now: float) -> None:
    """As metric_api does with each batch."""
    for start in range(0, len(items), 50):
        done = ledger.record(items[start : start + 50], now)
        core.add_rows(done.rows, now)
        core.add_predictions(done.predicted_at, now)


def started(logs: Path, now: float) -> SegmentedStats:
    ledger, core = MetricLedger(logs, segment_keys=CONFIG.segment_keys), SegmentedStats(BASELINE, CONFIG)
    ledger.open(core, now)
    ledger.close()
    return core


def test_a_start_from_the_snapshot_and_the_tail_is_the_full_rebuild_without_reading_the_older_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three regions tracked, and rare ones (each once) in (other) and the Misra–Gries counters; no promotion:
    # the full rebuild's chunks and the service's batches promote alike only when there is none.
    # Every tenth prediction untagged.
    rows = [
        replace(row, tags=None if i % 10 == 7 else {"region": f"rare{i}" if i % 13 == 12 else f"r{i % 3}"})
        for i, row in enumerate(skewed_rows(1200, 4))
    ]
    before, after = rows[:800], rows[800:]
    now = T0 + 1200 * 7.0 + 100
    ledger, live = MetricLedger(tmp_path, segment_keys=CONFIG.segment_keys), SegmentedStats(BASELINE, CONFIG)
    ledger.open(live, now)
    # Before the snapshot: 700 rows joined; 100 predictions held (60 of them labelled after it, 40 still waiting).
    first = [half(kind, row) for row in before for kind in ("y_pred", "y_true") if kind == "y_pred" or int(row.id[-3:]) < 700]
    recorded(ledger, live, first, now)
    snapshot = ledger.snapshot(live)
    assert snapshot is not None
    ledger.write_snapshot(snapshot)
    # After it: the 60 labels, 340 rows more, 30 whose label comes first, and 30 predictions that wait.
    late_labels = [half("y_true", row) for row in before[700:760]]
    recorded(ledger, live, late_labels + [half(kind, row) for row in after[:340] for kind in ("y_pred", "y_true")], now)
    recorded(ledger, live, [half("y_true", row) for row in after[340:370]], now)
    recorded(ledger, live, [half("y_pred", row) for row in after[340:]], now)
    assert ledger.waiting_halves("y_pred") == 70
    ledger.close()
    assert live.by_time.report(now)["buckets"][0]["predictions"] > 0

    read_whole: list[int] = []
    whole = SqliteHalfStore.written_for_segments

    def spied(store: SqliteHalfStore, chunk: int = 50_000) -> Iterator[list[MetricRow]]:
        read_whole.append(chunk)
        return whole(store, chunk)

    monkeypatch.setattr(SqliteHalfStore, "written_for_segments", spied)
    from_snapshot = started(tmp_path, now)
    assert from_snapshot.where_when_loaded and read_whole == []  # the state's older rows not read
    monkeypatch.undo()
    (tmp_path / METRIC_SNAPSHOT).unlink()
    rebuilt = started(tmp_path, now)
    assert not rebuilt.where_when_loaded
    expected = views(rebuilt, now)
    assert expected["by_time"]["buckets"] and expected["segments"]["region"]["values"]["(other)"]["windows"]["all"]["count"]
    assert not same(views(from_snapshot, now), expected)
    assert not same(views(live, now), expected)  # and what the running service had: each prediction counted once
    assert sum(b["predictions"] for b in expected["by_time"]["buckets"]) == 1200  # every prediction once


def test_values_promoted_and_replaced_within_one_batch_leave_their_rows_in_other() -> None:
    # As the full rebuild at start-up feeds 50,000 rows at a time: b is promoted over a, then c over b,
    # all in one batch (a segment's count is taken after the batch). This raised KeyError and stopped the start.
    book = SegmentBook(("k",), 1, None)
    values = ["a", "b", "b", "c", "c"]
    rows = [MetricRow.of(str(i), 10.0, 10.0 + i, tags={"k": value}) for i, value in enumerate(values)]
    book.add(rows, np.full(5, 10.0), 10.0 + np.arange(5.0))
    summary = book.summary()["k"]
    assert list(summary["values"]) == ["c", OTHER] and summary["promoted"] == 2
    assert summary["values"]["c"]["windows"]["all"]["count"] == 1  # its row after its promotion
    assert summary["values"][OTHER]["windows"]["all"]["count"] == 4  # every other row, once
