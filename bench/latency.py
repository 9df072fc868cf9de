"""Latency: samples offered at fixed rates, each timed from its id (its publish time) to its row in the CSV;
beside each rate the broker's version, and whether the pipeline kept up with the rate."""

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.broker import broker_version
from bench.figures import percentile, rounded
from bench.ingest import machine_busy_s
from bench.machine import cpu_use, service_pids
from bench.progress import say, wait_for_progress
from harness.pipeline import Pipeline
from services.features_api.publisher import MAX_BURST

TAIL_POLL_S = 0.002
SUSTAINED_SHARE = 0.95  # of the offered rate, offered and written, for the rate to count as sustained


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


def sustained(offered_per_s: float, achieved_per_s: float, completed_per_s: float, complete: bool) -> str:
    """Whether the run kept up with the offered rate: "yes", or "no: " and what fell short. The load
    generator must have offered ≥ 95 % of the rate, and the pipeline written the rows at ≥ 95 % of it
    (every row, from the first request to the last row): a pipeline that falls behind builds a backlog,
    and its percentiles then grow with the length of the run, not with the rate."""
    floor = SUSTAINED_SHARE * offered_per_s
    if not complete:
        return "no: rows never came"
    if achieved_per_s < floor:
        return f"no: offered only {achieved_per_s:,.0f}/s"
    if completed_per_s < floor:
        return f"no: rows written at {completed_per_s:,.0f}/s"
    return "yes"


def latency(
    pipeline: Pipeline, rates: list[float], seconds: float, all_ids: list[str], problems: list[str], broker: str
) -> list[dict[str, Any]]:
    """Each rate offered for ``seconds``; a row per rate with ``broker`` (where the broker runs) and its
    version as the broker announces it."""
    version = broker_version(pipeline.amqp_url)
    pids = service_pids(pipeline)
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
                say(f"latency: {rate:g} samples/s for {seconds:g}s ({total} samples), RabbitMQ {version} ({broker})")
                ids: list[str] = []
                requests = 0
                cpu_before, busy_before = cpu_use(pids), machine_busy_s()
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
                cpu_after, busy_after = cpu_use(pids), machine_busy_s()
                services_s = sum((cpu_after[n] or 0.0) - (cpu_before[n] or 0.0) for n in pids)
                all_ids.extend(ids)

                def arrived(ids: list[str] = ids) -> int:
                    return sum(1 for i in ids if i in tail.seen)

                backlog = len(ids) - arrived()  # published, not yet in the CSV, as the offer ends
                complete = wait_for_progress(arrived, len(ids), f"latency rows at {rate:g}/s")
                latencies = [(tail.seen[i] - float(i)) * 1000 for i in ids if i in tail.seen]
                last_row = max((tail.seen[i] for i in ids if i in tail.seen), default=time.time())
                # samples over the window, or over the time it took to publish them if that was longer
                achieved = len(ids) / max(published_s, seconds)
                completed = len(latencies) / max(last_row - started, seconds)  # rows written, the drain included
                result = {
                    "broker": broker,
                    "broker_version": version,
                    "offered_per_s": rate,
                    "seconds": seconds,
                    "samples": len(ids),
                    "requests": requests,
                    "achieved_per_s": round(achieved, 1),
                    "completed_per_s": round(completed, 1),
                    "backlog_at_end": backlog,
                    "drain_s": round(max(0.0, last_row - started - published_s), 3),
                    "sustained": sustained(rate, achieved, completed, complete),
                    "rows_seen": len(latencies),
                    # the machine while the rate was offered: every process (others' too), and the four services' part
                    "machine_busy_cores": round((busy_after - busy_before) / published_s, 2),
                    "services_cores": round(services_s / published_s, 2),
                    "load_1m": round(os.getloadavg()[0], 2),
                    "p50_ms": rounded(percentile(latencies, 50)),
                    "p95_ms": rounded(percentile(latencies, 95)),
                    "p99_ms": rounded(percentile(latencies, 99)),
                    "max_ms": rounded(max(latencies) if latencies else None),
                }
                results.append(result)
                if not complete:
                    problems.append(
                        f"latency at {rate:g}/s ({broker}): {len(ids) - len(latencies)} of {len(ids)} rows never came"
                    )
                time.sleep(0.5)  # a quiet moment between rates
    finally:
        tail.stop()
        sys.setswitchinterval(switch_interval)
    return results
