"""Ingest: predictions made elsewhere through ``POST /predictions``, ``clients`` loops each sending
requests of ``ITEMS_PER_REQUEST`` items (the diabetes features as a list, a plausible prediction) as
fast as they are answered; then, untimed, their labels through ``POST /labels`` and a check that the
CSV holds exactly one row per id."""

import asyncio
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
from sklearn.datasets import load_diabetes

from bench.figures import percentile, rounded
from bench.machine import broker_pid, cpu_use, service_pids
from bench.progress import say, wait_for_progress
from bench.throughput import LineCounter
from harness.checker import check_all
from harness.cluster import shard_csvs
from harness.pipeline import Pipeline
from services.features_api.intake import MAX_ITEMS as LABELS_PER_REQUEST

ITEMS_PER_REQUEST = 1000
TIMEOUT_S = 60.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every core, every process: /proc/stat less idle and iowait)."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _CLOCK_TICKS


class Requests:
    """The body of request ``n``: items with ids ``ingest-<n * ITEMS_PER_REQUEST + i>``, cycling over the
    diabetes rows. Each row's part after the id is serialised once: the load generator shares the cores
    with the services, so a body costs it a join, not a json.dumps of a thousand objects."""

    def __init__(self) -> None:
        data = load_diabetes()
        self.features: list[list[float]] = data.data.tolist()
        self.targets: list[float] = [float(y) for y in data.target]
        # a plausible prediction: the label pulled a quarter of the way towards the mean
        mean = sum(self.targets) / len(self.targets)
        self.tails = [
            f',"prediction":{round(0.75 * y + 0.25 * mean, 2)!r},"features":{json.dumps(row)}}}'
            for row, y in zip(self.features, self.targets, strict=True)
        ]

    @staticmethod
    def ids(n: int) -> range:
        return range(n * ITEMS_PER_REQUEST, (n + 1) * ITEMS_PER_REQUEST)

    def body(self, n: int) -> bytes:
        tails = self.tails
        items = ",".join(f'{{"id":"ingest-{k}"{tails[k % len(tails)]}' for k in self.ids(n))
        return f'{{"predictions":[{items}]}}'.encode()

    def label(self, k: int) -> dict[str, Any]:
        return {"id": f"ingest-{k}", "y_true": self.targets[k % len(self.targets)]}


async def _load(url: str, headers: dict[str, str], requests: Requests, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` loops, each with its own kept-alive connection, sending its next request as soon as
    its last one is answered; a request counts when it is answered 200 with every item accepted."""
    numbers = itertools.count()
    accepted: list[int] = []  # numbers of the requests taken whole
    latencies: list[float] = []
    refusals: dict[str, int] = {}
    headers = {**headers, "Content-Type": "application/json"}
    sessions = [
        httpx.AsyncClient(limits=httpx.Limits(max_connections=1, max_keepalive_connections=1), timeout=TIMEOUT_S)
        for _ in range(clients)
    ]

    async def send(client: httpx.AsyncClient) -> float | None:
        n = next(numbers)
        body = requests.body(n)
        began = time.perf_counter()
        try:
            answer = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            problem = type(exc).__name__
        else:
            if answer.status_code == 200 and answer.json().get("accepted") == ITEMS_PER_REQUEST:
                accepted.append(n)
                return (time.perf_counter() - began) * 1000
            problem = f"HTTP {answer.status_code}: {answer.text[:300]}"
        refusals[problem] = refusals.get(problem, 0) + 1
        return None

    try:
        await asyncio.gather(*(send(session) for session in sessions))  # warm-up: connect; not timed
        warm_up = len(accepted)
        deadline = time.perf_counter() + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            while time.perf_counter() < deadline:
                if (took := await send(client)) is not None:
                    latencies.append(took)

        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for session in sessions))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await asyncio.gather(*(session.aclose() for session in sessions), return_exceptions=True)
    timed = len(accepted) - warm_up
    return {
        "accepted_requests": accepted,
        "timed_requests": timed,
        "refused_requests": sum(refusals.values()),
        "refusals": refusals,
        "seconds": round(elapsed, 2),
        "items_per_s": round(timed * ITEMS_PER_REQUEST / elapsed, 1) if elapsed > 0 else None,
        "requests_per_s": round(timed / elapsed, 2) if elapsed > 0 else None,
        "p50_ms": rounded(percentile(latencies, 50), 1),
        "p99_ms": rounded(percentile(latencies, 99), 1),
        "max_ms": rounded(max(latencies) if latencies else None, 1),
        # the load generator's own CPU (1.0 = one core): it shares the cores with what it measures
        "loadgen_cpu_share": round(cpu / elapsed, 2) if elapsed > 0 else None,
    }


def ingest(
    pipeline: Pipeline, clients: int, seconds: float, pipeline_samples_per_s: float | None, problems: list[str]
) -> dict[str, Any]:
    """The figures of ``POST /predictions`` under load, and the check of the rows its items became."""
    requests = Requests()
    counters = [LineCounter(csv) for csv in shard_csvs(pipeline)]

    def rows_now() -> int:
        return sum(counter.rows() for counter in counters)

    baseline = rows_now()
    pids = service_pids(pipeline)
    pids["rabbitmq"] = broker_pid()
    say(f"ingest: {clients} clients POSTing /predictions of {ITEMS_PER_REQUEST} items for {seconds:g}s")
    cpu_before, busy_before, began = cpu_use(pids), machine_busy_s(), time.perf_counter()
    load = asyncio.run(_load(f"{pipeline.url('model_api')}/predictions", pipeline.auth, requests, clients, seconds))
    cpu_after, busy_after, wall = cpu_use(pids), machine_busy_s(), time.perf_counter() - began
    taken = load.pop("accepted_requests")
    ids = [f"ingest-{k}" for n in taken for k in Requests.ids(n)]
    # CPU over the whole load, warm-up included: per item taken
    cpu_ms_per_item = {
        name: round((after - before) / len(ids) * 1000, 4)
        for name, before in cpu_before.items()
        if ids and before is not None and (after := cpu_after.get(name)) is not None
    }

    say(f"ingest: {len(ids)} items taken; their labels in requests of {LABELS_PER_REQUEST}, then waiting for their rows")
    labels_started = time.perf_counter()
    with httpx.Client(timeout=TIMEOUT_S, headers=pipeline.auth) as client:
        per_label_request = LABELS_PER_REQUEST // ITEMS_PER_REQUEST  # requests whose labels go in one POST /labels
        for start in range(0, len(taken), per_label_request):
            chunk = taken[start : start + per_label_request]
            labels = [requests.label(k) for n in chunk for k in Requests.ids(n)]
            answer = client.post(f"{pipeline.url('features_api')}/labels", json={"labels": labels})
            answer.raise_for_status()
            if answer.json()["accepted"] != len(labels):
                problems.append(f"ingest: POST /labels accepted {answer.json()['accepted']} of {len(labels)} labels")
    labels_s = time.perf_counter() - labels_started
    complete = wait_for_progress(rows_now, baseline + len(ids), "ingest rows")
    rows_s = time.perf_counter() - labels_started
    verdict = check_all(ids, shard_csvs(pipeline))

    items_per_s = load["items_per_s"]
    result: dict[str, Any] = {
        "clients": clients,
        "items_per_request": ITEMS_PER_REQUEST,
        **load,
        "items": len(ids),
        # against the pipeline's end-to-end samples/s of the throughput burst (the performance issue asks ≥ 3)
        "vs_pipeline": round(items_per_s / pipeline_samples_per_s, 2) if items_per_s and pipeline_samples_per_s else None,
        "cpu_ms_per_item": cpu_ms_per_item,
        # cores busy during the load: the whole machine's, and the services' and broker's of it (the rest is the
        # load generator and whatever else runs on the machine)
        "machine_busy_cores": round((busy_after - busy_before) / wall, 2),
        "pipeline_cores": round(sum(cpu_ms_per_item.values()) * len(ids) / 1000 / wall, 2),
        "labels_s": round(labels_s, 2),
        "rows_s": round(rows_s, 2),
        "complete": complete,
        "published": verdict.published,
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
    }
    if load["refused_requests"]:
        problems.append(f"ingest: {load['refused_requests']} POST /predictions not taken whole: {load['refusals']}")
    if not ids:
        problems.append("ingest: POST /predictions took no request")
    if verdict.lost or verdict.duplicated:
        problems.append(f"ingest: lost {verdict.lost}, duplicated {verdict.duplicated} ids")
    return result
