"""Latency: samples offered at fixed rates, each timed from its id (its publish time) to its row in the CSV."""

import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.figures import percentile, rounded
from bench.progress import say, wait_for_progress
from harness.pipeline import Pipeline
from services.features_api.publisher import MAX_BURST

TAIL_POLL_S = 0.002


class CsvTail(threading.Thread):
    """Follows the CSV from its current end; stamps each new id with time.time() when first seen."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True, name="csv-tail")
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.seen: dict[str, float] = {}
        self._halt = threading.Event()
        self._partial = b""

    def run(self) -> None:
        while not self.path.exists() and not self._halt.wait(TAIL_POLL_S):
            pass
        with self.path.open("rb") as f:
            while not self._halt.is_set():
                f.seek(self.offset)
                data = f.read()
                now = time.time()
                if data:
                    self.offset += len(data)
                    data = self._partial + data
                    end = data.rfind(b"\n") + 1
                    self._partial = data[end:]
                    for line in data[:end].splitlines():
                        comma = line.find(b",")
                        if comma > 0:
                            self.seen.setdefault(line[:comma].decode(), now)
                time.sleep(TAIL_POLL_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


def latency(
    pipeline: Pipeline, rates: list[float], seconds: float, all_ids: list[str], problems: list[str]
) -> list[dict[str, Any]]:
    features = pipeline.url("features_api")
    tail = CsvTail(pipeline.csv)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # the tail thread gets the GIL within ~0.5 ms, not 5 ms
    tail.start()
    results = []
    try:
        with httpx.Client(timeout=600) as client:
            for rate in rates:
                total = max(1, round(rate * seconds))
                say(f"latency: {rate:g} samples/s for {seconds:g}s ({total} samples)")
                ids: list[str] = []
                requests = 0
                started = time.time()
                next_tick = started
                while len(ids) < total:
                    elapsed = time.time() - started
                    due = min(total, int(rate * elapsed) + 1)
                    count = min(due - len(ids), MAX_BURST)  # behind: catch up in requests of the most one may ask
                    if count > 0:
                        answer = client.post(f"{features}/features/publish", json={"count": count})
                        answer.raise_for_status()
                        ids.extend(answer.json()["ids"])
                        requests += 1
                    next_tick += 0.010
                    pause = next_tick - time.time()
                    if pause > 0:
                        time.sleep(pause)
                    else:
                        next_tick = time.time()  # behind: no catching up tick by tick, `due` does that
                published_s = time.time() - started
                all_ids.extend(ids)

                def arrived(ids: list[str] = ids) -> int:
                    return sum(1 for i in ids if i in tail.seen)

                complete = wait_for_progress(arrived, len(ids), f"latency rows at {rate:g}/s")
                latencies = [(tail.seen[i] - float(i)) * 1000 for i in ids if i in tail.seen]
                result = {
                    "offered_per_s": rate,
                    "seconds": seconds,
                    "samples": len(ids),
                    "requests": requests,
                    # samples over the window, or over the time it took to publish them if that was longer
                    "achieved_per_s": round(len(ids) / max(published_s, seconds), 1),
                    "rows_seen": len(latencies),
                    "p50_ms": rounded(percentile(latencies, 50)),
                    "p95_ms": rounded(percentile(latencies, 95)),
                    "p99_ms": rounded(percentile(latencies, 99)),
                    "max_ms": rounded(max(latencies) if latencies else None),
                }
                results.append(result)
                if not complete:
                    problems.append(f"latency at {rate:g}/s: {len(ids) - len(latencies)} of {len(ids)} rows never came")
                time.sleep(0.5)  # a quiet moment between rates
    finally:
        tail.stop()
        sys.setswitchinterval(switch_interval)
    return results
