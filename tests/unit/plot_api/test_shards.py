"""plot_api over several shards: their rows read over HTTP a little at a time, and one summary
over their union, checked against figures computed here from the raw rows."""

import math
import random
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.common.metric_rows import METRIC_LOG_HEADER, MetricRow, format_row
from services.metric_api.rows_feed import read_chunk
from services.metric_api.stats import QualityStats
from services.plot_api.merged_summary import ShardSummary, merge_summaries, merge_windows
from services.plot_api.shards import ShardRowsTail

NOW = 1_700_000_000.0


def make_rows(n: int, seed: int, prefix: str) -> list[MetricRow]:
    rng = random.Random(seed)
    return [
        MetricRow.of(f"{prefix}{i}", float(rng.randint(25, 346)), rng.uniform(50, 300), f"v{i % 2}", NOW - 10) for i in range(n)
    ]


def shard_summary(rows: list[MetricRow], baseline: float, **join: int) -> dict:
    """What a shard's metric_api answers (its own statistics core, as the service builds it)."""
    stats = QualityStats(baseline)
    stats.add_rows(rows, NOW)
    core = stats.summary(NOW)
    return {
        "count": core["windows"]["all"]["count"],
        "windows": core["windows"],
        "by_model_version": core["by_model_version"],
        "join": {"pending_y_true": 0, "pending_y_pred": 0, "orphans": 0, "late_joins": 0, "dead_lettered": 0, **join},
        "labels": {"predictions": len(rows) + 3, "waiting": {"y_pred": {"<1m": 3}}},
        "latency": core["latency"],
        "last_row_at": core["last_row_at"],
        "rows_per_s": core["rows_per_s"],
        "baseline": {"mean": baseline},
        "alert": None,
        "csv": "x",
    }


def union_of(rows: list[MetricRow]) -> dict:
    stats = QualityStats()
    stats.add_history(rows)
    return stats.summary(NOW)


def expected(rows: list[MetricRow], baseline: float) -> dict[str, float]:
    y_true = np.array([row.y_true for row in rows])
    y_pred = np.array([row.y_pred for row in rows])
    e = y_pred - y_true
    mae = float(np.mean(np.abs(e)))
    baseline_mae = float(np.mean(np.abs(y_true - baseline)))
    return {
        "count": len(rows),
        "mae": mae,
        "rmse": math.sqrt(float(np.mean(e * e))),
        "me": float(np.mean(e)),
        "max_ae": float(np.max(np.abs(e))),
        "p50_ae": float(np.median(np.abs(e))),
        "p95_ae": float(np.percentile(np.abs(e), 95)),
        "r2": 1 - float(np.sum(e * e)) / float(np.sum((y_true - y_true.mean()) ** 2)),
        "baseline_mae": baseline_mae,
        "skill": 1 - mae / baseline_mae,
    }


def test_the_summary_over_two_shards_is_that_of_all_their_rows() -> None:
    a, b = make_rows(700, 1, "a"), make_rows(300, 2, "b")
    baseline = 150.0
    merged = merge_summaries(
        [ShardSummary("http://s0", shard_summary(a, baseline, orphans=2)), ShardSummary("http://s1", shard_summary(b, baseline))],
        union_of(a + b),
    )
    want = expected(a + b, baseline)
    assert merged["count"] == 1000 and merged["missing"] == []
    for name, value in want.items():
        assert merged["windows"]["all"][name] == pytest.approx(value, rel=1e-9), name
    assert (merged["mae"], merged["rmse"]) == (merged["windows"]["all"]["mae"], merged["windows"]["all"]["rmse"])
    # Per model version and over the last 5 minutes: merged from the shards' figures.
    for version in ("v0", "v1"):
        rows = [row for row in a + b if row.model_version == version]
        window, want = merged["by_model_version"][version], expected(rows, baseline)
        for name in ("count", "mae", "rmse", "me", "max_ae", "baseline_mae", "skill"):
            assert window[name] == pytest.approx(want[name], rel=1e-9), (version, name)
        assert window["p50_ae"] is None and window["r2"] is None  # not mergeable from summaries: said, not guessed
    assert merged["windows"]["last_5m"]["rmse"] == pytest.approx(expected(a + b, baseline)["rmse"], rel=1e-9)
    assert merged["join"]["orphans"] == 2
    assert merged["labels"]["predictions"] == 1006 and merged["labels"]["waiting"] == {"y_pred": {"<1m": 6}}
    assert merged["labels"]["labelled_share"] == pytest.approx(1000 / 1006)


def test_a_shard_that_does_not_answer_is_named_not_an_error() -> None:
    a, b = make_rows(50, 3, "a"), make_rows(40, 4, "b")
    merged = merge_summaries(
        [ShardSummary("http://s0", shard_summary(a, 150.0)), ShardSummary("http://s1", None, "did not answer", rows_read=40)],
        union_of(a + b),
    )
    assert merged["missing"] == ["http://s1"]
    assert merged["shards"][1] == {
        "url": "http://s1",
        "answered": False,
        "count": None,
        "rows_read": 40,
        "problem": "did not answer",
    }
    assert merged["count"] == 90  # the rows read from it before it went still count


def test_merging_no_rows_is_an_empty_window() -> None:
    assert merge_windows([{"count": 0}])["count"] == 0
    assert merge_windows([])["mae"] is None


def write_csv(path: Path, rows: list[MetricRow]) -> None:
    path.write_text(METRIC_LOG_HEADER + "\n" + "".join(map(format_row, rows)))


def serve_files(files: dict[str, Path], max_bytes: int = 1024) -> httpx.MockTransport:
    """Each shard's GET /metrics/rows, as metric_api answers it, from a file."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = files[request.url.host]
        chunk = read_chunk(path, int(request.url.params["offset"]), max_bytes)
        if chunk is None:
            return httpx.Response(416)
        return httpx.Response(
            200, content=chunk.data, headers={"X-Next-Offset": str(chunk.next_offset), "X-Log-Id": chunk.log_id}
        )

    return httpx.MockTransport(handle)


def test_the_rows_of_every_shard_are_read_a_little_at_a_time(tmp_path: Path) -> None:
    a, b = make_rows(200, 5, "a"), make_rows(100, 6, "b")
    files = {"s0": tmp_path / "a.csv", "s1": tmp_path / "b.csv"}
    write_csv(files["s0"], a[:150])
    write_csv(files["s1"], b)
    tail = ShardRowsTail(["http://s0", "http://s1"], transport=serve_files(files))
    assert tail.read_new() == 250
    with files["s0"].open("a") as f:
        f.write("".join(map(format_row, a[150:])) + "a999,1.0")  # and a line still being written
    assert tail.read_new() == 50
    assert tail.read_new() == 0
    assert tail.count == 300 and [shard.rows for shard in tail.shards] == [200, 100]
    want = expected(a + b, 0.0)
    union = tail.union_summary(NOW)["windows"]["all"]
    assert (
        union["count"] == 300 and union["mae"] == pytest.approx(want["mae"]) and union["p95_ae"] == pytest.approx(want["p95_ae"])
    )


def test_a_shard_down_keeps_what_was_read_and_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    a, b = make_rows(20, 7, "a"), make_rows(10, 8, "b")
    files = {"s0": tmp_path / "a.csv", "s1": tmp_path / "b.csv"}
    write_csv(files["s0"], a)
    write_csv(files["s1"], b)
    transport = serve_files(files)
    down = {"s1": False}

    def handle(request: httpx.Request) -> httpx.Response:
        if down.get(request.url.host):
            raise httpx.ConnectError("connection refused", request=request)
        return transport.handle_request(request)

    tail = ShardRowsTail(["http://s0", "http://s1"], transport=httpx.MockTransport(handle))
    assert tail.read_new() == 30
    down["s1"] = True
    assert tail.read_new() == 0 and tail.count == 30
    assert "ConnectError" in (tail.shards[1].problem or "")
    down["s1"] = False
    files["s1"].unlink()
    write_csv(files["s1"], b[:5])  # a new, shorter file
    tail.read_new()
    tail.read_new()
    assert tail.count == 25 and tail.shards[1].problem is None
