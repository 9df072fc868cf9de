"""plot_api over several shards: their rows read over HTTP a little at a time, and the windows over
their union, checked against figures computed here from the raw rows (the summary merged over the
shards: test_merged_summary.py)."""

import math
import random
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.common.metric_rows import METRIC_LOG_HEADER, MetricRow, format_row
from services.metric_api.rows_feed import read_chunk
from services.plot_api.shards import ShardRowsTail

NOW = 1_700_000_000.0


def make_rows(n: int, seed: int, prefix: str) -> list[MetricRow]:
    rng = random.Random(seed)
    return [
        MetricRow.of(f"{prefix}{i}", float(rng.randint(25, 346)), rng.uniform(50, 300), f"v{i % 2}", NOW - 10) for i in range(n)
    ]


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


def write_csv(path: Path, rows: list[MetricRow]) -> None:
    path.write_text(METRIC_LOG_HEADER + "\n" + "".join(map(format_row, rows)))


def serve_files(files: dict[str, Path], max_bytes: int = 1024) -> httpx.MockTransport:
    """Each shard's GET /metrics/rows, as metric_api answers it, from a file."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = files[request.url.host]
        chunk = read_chunk(path, int(request.url.params["offset"]), max_bytes)
        if chunk is None:
            return httpx.Response(416)
        return httpx.Response(200, content=chunk.data, headers=chunk.headers())

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


def test_a_shard_answering_something_else_than_the_rows_feed_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    """A 200 without the feed's headers (another service at that URL, a proxy's page): named as the
    shard's problem; the other shards are still read (a KeyError once escaped and stopped the refresh loop)."""
    files = {"s0": tmp_path / "a.csv"}
    write_csv(files["s0"], make_rows(10, 9, "a"))
    feed = serve_files(files)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "s1":
            return httpx.Response(200, text="<html>a login page</html>")
        return feed.handle_request(request)

    tail = ShardRowsTail(["http://s0", "http://s1"], transport=httpx.MockTransport(handle))
    assert tail.read_new() == 10
    assert "X-Next-Offset" not in (tail.shards[0].problem or "") and "next_offset" in (tail.shards[1].problem or "")
