"""What segments and the buckets by prediction time cost metric_api: python -m bench.segments.

- the statistics' cost per row (QualityStats before, SegmentedStats after: with no segment key,
  with two keys of 10 values, and with two keys of which one has a new value on every row), fed in
  batches of 200 rows as the consumer takes them;
- the durable path's cost per row (MetricLedger.record: the join in SQLite, the CSV append with
  fsync) without tags and with two segment tags;
- the memory of one segment (empty, then per row).
Prints one JSON document; the numbers are this machine's.
"""

import json
import logging
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from services.common.alerts import AlertBoard
from services.common.messages import LabelMessage, PredictionMessage
from services.common.metric_rows import MetricRow
from services.metric_api.ledger import MetricLedger
from services.metric_api.segments import SegmentStats
from services.metric_api.stats import QualityStats
from services.metric_api.where_when import SegmentAlerts, SegmentedStats, WhereWhenConfig

BATCH = 200
T0 = 1_700_000_000.0


def rows_of(
    n: int, tags: Callable[[int], dict[str, str] | None], seed: int = 1, estimate: float | None = None
) -> list[MetricRow]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(25, 347, n).astype(float)
    y_pred = y_true + rng.normal(0, 50, n)
    return [
        MetricRow.of(
            f"{T0 + i:.6f}",
            float(t),
            float(p),
            "v1",
            ts=T0 + i,
            lag_s=0.1,
            predicted_at=T0 + i,
            tags=tags(i),
            estimated_error=estimate,
        )
        for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True))
    ]


def per_row_us(make: Callable[[], QualityStats], rows: list[MetricRow], alerts: bool = False) -> float:
    """µs a row of the statistics' add_rows (and, with ``alerts``, of the segments' two alerts after each batch)."""
    stats = make()
    checker = SegmentAlerts(AlertBoard("bench", None), 1.5, 50) if alerts else None
    started = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        stats.add_rows(rows[start : start + BATCH], T0 + start)
        if checker is not None and isinstance(stats, SegmentedStats):
            checker.check(stats, T0 + start)
    return 1e6 * (time.perf_counter() - started) / len(rows)


def statistics(n: int) -> dict[str, float]:
    few = rows_of(n, lambda i: {"region": f"r{i % 10}", "channel": f"c{i % 3}"})
    distinct = rows_of(n, lambda i: {"region": f"r{i % 10}", "user": f"u{i}"})
    estimated = rows_of(n, lambda i: {"region": f"r{i % 10}", "channel": f"c{i % 3}"}, estimate=40.0)
    return {
        "before: QualityStats": per_row_us(lambda: QualityStats(150.0), few),
        "after, no SEGMENT_KEYS": per_row_us(lambda: SegmentedStats(150.0, WhereWhenConfig()), few),
        "after, 2 keys of 10 and 3 values": per_row_us(
            lambda: SegmentedStats(150.0, WhereWhenConfig(("region", "channel"))), few
        ),
        "after, 2 keys, one value new on every row": per_row_us(
            lambda: SegmentedStats(150.0, WhereWhenConfig(("region", "user"))), distinct
        ),
        "2 keys of 10 and 3 values, with the segments' alerts": per_row_us(
            lambda: SegmentedStats(150.0, WhereWhenConfig(("region", "channel"))), few, alerts=True
        ),
        "2 keys of 10 and 3 values, rows with estimates, with the segments' alerts (and checks)": per_row_us(
            lambda: SegmentedStats(150.0, WhereWhenConfig(("region", "channel"))), estimated, alerts=True
        ),
    }


def ledger_us(n: int, tagged: bool, reopen: dict[str, float] | None = None) -> float:
    """µs a row of MetricLedger.record; with ``reopen``, also the seconds a start-up takes to rebuild the
    statistics from those rows: without and with the segments and the buckets by time."""
    keys = ("region", "channel") if tagged else ()
    with tempfile.TemporaryDirectory() as folder:
        ledger = MetricLedger(Path(folder), segment_keys=keys)
        ledger.open(QualityStats(150.0), T0)
        halves: list[tuple[Any, Any]] = []
        for i in range(n):
            tags = {"region": f"r{i % 10}", "channel": f"c{i % 3}"} if tagged else None
            sample_id = f"{T0 + i:.6f}"
            halves.append(("y_pred", PredictionMessage(id=sample_id, body=100.0 + i % 7, ts=T0 + i, tags=tags)))
            halves.append(("y_true", LabelMessage(id=sample_id, body=101.0, ts=T0 + i)))
        started = time.perf_counter()
        for start in range(0, len(halves), BATCH):
            ledger.record(halves[start : start + BATCH], T0 + n)
        took = time.perf_counter() - started
        ledger.close()
        if reopen is not None:
            for name, core in (
                ("QualityStats", QualityStats(150.0)),
                ("SegmentedStats", SegmentedStats(150.0, WhereWhenConfig(keys))),
            ):
                opened = time.perf_counter()
                ledger.open(core, T0 + n)
                reopen[name] = time.perf_counter() - opened
                ledger.close()
    return 1e6 * took / n


def segment_memory(rows: int) -> dict[str, float]:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    segments = [SegmentStats(None) for _ in range(200)]
    empty = (tracemalloc.get_traced_memory()[0] - before) / len(segments)
    for segment in segments[:20]:
        segment.add(np.ones(rows), np.full(rows, 2.0), np.full(rows, 1.0))
    filled = (tracemalloc.get_traced_memory()[0] - before - empty * (len(segments) - 20)) / 20
    tracemalloc.stop()
    return {"bytes_empty_segment": empty, f"bytes_segment_of_{rows}_rows": filled, "bytes_per_row": (filled - empty) / rows}


def segment_estimate_alert(runs: int = 50, calm_rows: int = 20_000) -> dict[str, Any]:
    """The segment's check of the estimate on the integration test's scenario (four cities, N(0, 10)
    noise, every row carrying the estimate 8, then Lyon's predictions ``shift`` too high): how many of
    Lyon's shifted rows until its alert is raised, over ``runs`` seeds; and the raises of any segment
    in ``calm_rows`` rows without a shift, per seed."""

    def batch(rng: np.random.Generator, i: int, shift: float) -> list[MetricRow]:
        cities = rng.choice(["Paris", "Lyon", "Nice", "Lille"], 20)
        y_true = rng.integers(25, 347, 20).astype(float)
        noise = rng.normal(0, 10, 20) + np.where(cities == "Lyon", shift, 0.0)
        return [
            MetricRow.of(f"{i}.{k}", float(t), float(t + e), tags={"city": str(c)}, estimated_error=8.0)
            for k, (t, e, c) in enumerate(zip(y_true, noise, cities, strict=True))
        ]

    logging.disable(logging.CRITICAL)  # each raise logs a line; this counts them instead
    out: dict[str, Any] = {}
    for shift in (6.0, 12.0):
        needed = []
        for seed in range(runs):
            rng = np.random.default_rng(seed)
            stats, board = SegmentedStats(None, WhereWhenConfig(("city",), 50)), AlertBoard("bench", None)
            alerts = SegmentAlerts(board, 3.0, 50)
            for i in range(20):
                stats.add_rows(batch(rng, i, 0.0), float(i))
                alerts.check(stats, float(i))
            lyon = 0
            for i in range(20, 200):
                rows = batch(rng, i, shift)
                lyon += sum(1 for row in rows if row.tags == {"city": "Lyon"})
                stats.add_rows(rows, float(i))
                alerts.check(stats, float(i))
                if "segment-estimate/city=Lyon" in alerts.raised:
                    needed.append(lyon)
                    break
        out[f"lyon_rows_to_raise_shift_{shift:g}"] = {
            "raised_in_runs": len(needed),
            "runs": runs,
            "median": float(np.median(needed)) if needed else None,
            "p90": float(np.percentile(needed, 90)) if needed else None,
        }
    false_raises = 0
    for seed in range(10):
        rng = np.random.default_rng(1000 + seed)
        stats, board = SegmentedStats(None, WhereWhenConfig(("city",), 50)), AlertBoard("bench", None)
        alerts = SegmentAlerts(board, 3.0, 50)
        for i in range(calm_rows // 20):
            stats.add_rows(batch(rng, i, 0.0), float(i))
            before = set(alerts.raised)
            alerts.check(stats, float(i))
            false_raises += len(set(alerts.raised) - before)
    out["calm"] = {"rows": 10 * calm_rows, "segments": 4, "raises": false_raises}
    logging.disable(logging.NOTSET)
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    reopen: dict[str, float] = {}
    result = {
        "rows": n,
        "statistics_us_per_row": statistics(n),
        "ledger_us_per_row": {"without tags": ledger_us(n // 10, False), "two segment tags": ledger_us(n // 10, True, reopen)},
        "ledger_rows": n // 10,
        "start_up_rebuild_s": reopen,
        "memory": segment_memory(100_000),
        "segment_estimate_alert": segment_estimate_alert(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
