"""Throughput: one burst of samples through ``POST /features/publish`` until the CSV has every row,
with lost/duplicated/unexpected ids, each process's CPU per sample and the services' peak memory."""

import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.figures import rounded
from bench.machine import RssSampler, broker_pid, cpu_use, rss_mb, service_pids
from bench.progress import COUNT_POLL_S, say, wait_for_progress
from harness.checker import check_all
from harness.cluster import shard_csvs
from harness.pipeline import Pipeline
from services.features_api.publisher import MAX_BURST

MAX_PUBLISH_COUNT = MAX_BURST  # samples per POST /features/publish in the throughput burst: the most one may ask


class LineCounter:
    """Counts the rows of a CSV cheaply: reads only the bytes appended since the last look."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.newlines = 0

    def rows(self) -> int:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        self.offset += len(data)
        self.newlines += data.count(b"\n")
        return max(0, self.newlines - 1)  # minus the header


def throughput(
    pipeline: Pipeline,
    rss: RssSampler | None,
    samples: int,
    problems: list[str],
    broker_pids: dict[str, int | None] | None = None,
    earlier: Sequence[str] = (),
) -> dict[str, Any]:
    """One burst; the figures. ``broker_pids``: the broker's VMs whose CPU to count (default: the
    local RabbitMQ's, as ``rabbitmq``). Rows are counted over every metric_api shard's CSV.
    ``earlier``: the ids of samples sent before on this pipeline (a warm-up), whose rows are
    expected in the CSV too (and checked: lost or duplicated alike)."""
    features = pipeline.url("features_api")
    csvs = shard_csvs(pipeline)
    counters = [LineCounter(csv) for csv in csvs]

    def rows_now() -> int:
        return sum(counter.rows() for counter in counters)

    baseline = rows_now()
    target = baseline + samples
    done_at: list[float] = []
    current = [baseline]
    stop = threading.Event()

    def watch() -> None:  # notes the moment the CSV has every row, even while we are still publishing
        while not stop.is_set():
            current[0] = rows_now()
            if current[0] >= target:
                done_at.append(time.time())
                return
            time.sleep(COUNT_POLL_S)

    if rss is not None:
        rss.take_window()
    pids = service_pids(pipeline) | ({"rabbitmq": broker_pid()} if broker_pids is None else broker_pids)
    cpu_before = cpu_use(pids)
    ids: list[str] = []
    watcher = threading.Thread(target=watch, daemon=True, name="row-count")
    say(f"throughput: publishing {samples} samples in requests of at most {MAX_PUBLISH_COUNT}")
    with httpx.Client(timeout=600) as client:
        started = time.time()
        watcher.start()
        left = samples
        while left > 0:
            count = min(left, MAX_PUBLISH_COUNT)
            answer = client.post(f"{features}/features/publish", json={"count": count})
            answer.raise_for_status()
            ids.extend(answer.json()["ids"])
            left -= count
        published_at = time.time()
    publish_s = published_at - started
    say(f"throughput: published in {publish_s:.1f}s; waiting for the CSV to have every row")
    complete = wait_for_progress(lambda: current[0], target, "throughput rows")
    stop.set()
    watcher.join(2)
    peaks = rss.take_window() if rss is not None else {}
    cpu_after = cpu_use(pids)
    cpu_ms_per_sample = {
        name: round((after - before) / samples * 1000, 3)
        for name, before in cpu_before.items()
        if before is not None and (after := cpu_after.get(name)) is not None
    }
    time.sleep(1.0)  # let metric_api settle after its last batch
    metric_api = pipeline.services["metric_api"].process
    assert metric_api is not None  # the pipeline started it
    metric_after = rss_mb(metric_api.pid)

    verdict = check_all([*earlier, *ids], csvs)
    result: dict[str, Any] = {
        "samples": samples,
        "publish_requests": math.ceil(samples / MAX_PUBLISH_COUNT),
        "publish_s": round(publish_s, 3),
        "publish_samples_per_s": round(samples / publish_s, 1) if publish_s > 0 else None,
        "complete": complete,
        "end_to_end_s": round(done_at[0] - started, 3) if done_at else None,
        "samples_per_s": round(samples / (done_at[0] - started), 1) if done_at else None,
        "published": verdict.published - len(set(earlier)),
        "rows": verdict.rows - baseline,
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
        "unexpected": verdict.unexpected,
        "peak_rss_mb": peaks,
        "cpu_ms_per_sample": cpu_ms_per_sample,
        "metric_api_rss_after_mb": rounded(metric_after),
    }
    if len(set(ids)) != len(ids):
        problems.append(f"throughput: features_api returned {len(ids) - len(set(ids))} repeated ids")
    if not complete:
        problems.append(f"throughput: the CSV stopped growing with {current[0] - baseline} of {samples} rows")
    if not verdict.exact:
        problems.append(f"throughput: lost {verdict.lost}, duplicated {verdict.duplicated}, unexpected {verdict.unexpected} ids")
    return result
