"""HTTP load: an async load loop of our own (httpx, or a minimal HTTP/1.1 client) against each endpoint."""

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.figures import median, percentile, rounded
from bench.machine import cpu_use
from bench.progress import say
from harness.pipeline import Pipeline
from harness.processes import wait_until


class HttpxSession:
    """One load-generating client: its own ``httpx.AsyncClient`` with one kept-alive connection.

    One shared client with a pool of ``clients`` connections was tried first: httpcore 1.0's
    pool rescans every connection for every waiting request (encode/httpx#3215), which at 50
    connections made the load generator, not the service, the bottleneck (~100 req/s where
    separate clients give ~700).
    """

    def __init__(self, url: str, method: str, body: Callable[[int], Any] | None) -> None:
        self.url, self.method, self.body = url, method, body
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1, max_keepalive_connections=1), timeout=30)

    async def request(self, n: int) -> str | None:
        """Send request ``n``; None when it succeeded, else what went wrong."""
        try:
            kwargs = {"json": self.body(n)} if self.body is not None else {}
            answer = await self.client.request(self.method, self.url, **kwargs)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return f"HTTP {answer.status_code}" if answer.status_code >= 400 else None

    async def close(self) -> None:
        await self.client.aclose()


class RawSession:
    """One load-generating client speaking HTTP/1.1 itself over one kept-alive asyncio connection.

    Costs ~0.1 ms of CPU per request where httpx costs 1-2 ms, so on a small machine it leaves
    the cores to the services. Only what these endpoints need: Content-Length bodies.
    """

    def __init__(self, url: str, method: str, body: Callable[[int], Any] | None) -> None:
        parsed = httpx.URL(url)
        self.host, self.port = parsed.host, parsed.port or 80
        self.head = f"{method} {parsed.raw_path.decode()} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        self.body = body
        self.plain = (self.head + "\r\n").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def _bytes(self, n: int) -> bytes:
        if self.body is None:
            return self.plain
        payload = json.dumps(self.body(n)).encode()
        head = f"{self.head}Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        return head.encode() + payload

    async def request(self, n: int) -> str | None:
        try:
            async with asyncio.timeout(30):
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                assert self.reader is not None
                self.writer.write(self._bytes(n))
                head = await self.reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                status = int(lines[0].split(b" ", 2)[1])
                length, close = None, False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                if length is None:
                    await self.close()
                    return "no Content-Length"
                await self.reader.readexactly(length)
                if close:
                    await self.close()
        except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            await self.close()
            return type(exc).__name__
        return f"HTTP {status}" if status >= 400 else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def _load(
    url: str, method: str, body: Callable[[int], Any] | None, clients: int, seconds: float, kind: str
) -> tuple[dict[str, Any], list[float]]:
    """``clients`` loops, each sending its next request as soon as its last one is answered: the
    window's figures, and its latencies (ms)."""
    session_type = RawSession if kind == "raw" else HttpxSession
    sessions = [session_type(url, method, body) for _ in range(clients)]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    try:
        await asyncio.gather(*(session.request(n) for n, session in enumerate(sessions)))  # warm-up: connect
        deadline = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            session, n = sessions[k], k
            while (began := time.perf_counter()) < deadline:
                problem = await session.request(n)
                if problem is None:
                    latencies.append((time.perf_counter() - began) * 1000)
                else:
                    errors[problem] = errors.get(problem, 0) + 1
                n += clients

        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)

    failed = sum(errors.values())
    done = len(latencies) + failed
    figures = {
        "requests": done,
        "ok": len(latencies),
        "errors": failed,
        "error_kinds": errors,
        "seconds": round(elapsed, 2),
        "req_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else None,
        # the load generator's own CPU: near 1 core busy means it, not the service, is the limit
        "loadgen_cpu_share": round(cpu / elapsed, 2) if elapsed > 0 else None,
        "loadgen_cpu_ms_per_req": round(cpu / done * 1000, 3) if done else None,
    }
    return figures, latencies


HEALTH = "GET /health (metric_api)"
PREDICT = "POST /predict"


def _predict_groups(model_api: str) -> tuple[float, float]:
    """model_api's http_predict_groups_total: (groups, requests) so far."""
    text = httpx.get(f"{model_api}/metrics", timeout=5).text
    found = {"groups": 0.0, "requests": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "http_predict_groups_total":
                found[sample.labels["what"]] = sample.value
    return found["groups"], found["requests"]


def http_load(
    pipeline: Pipeline,
    clients: int,
    seconds: float,
    kind: str,
    problems: list[str],
    rounds: int = 1,
    pids: dict[str, int | None] | None = None,
) -> list[dict[str, Any]]:
    """Each endpoint under ``clients`` concurrent clients for ``seconds``, in ``rounds`` rounds, the
    endpoints' order rotated each round, so that a slow stretch of a shared machine falls on every
    endpoint alike. Per endpoint: req/s (median of its rounds), its share of ``GET /health``'s req/s
    (the median over rounds of the ratio within a round), p50/p99 of every latency, and each
    process's CPU per request (``pids``: name -> pid, from /proc), /predict's group size."""
    from sklearn.datasets import load_diabetes

    rows = load_diabetes().data.tolist()
    plot, model_api = pipeline.url("plot_api"), pipeline.url("model_api")
    # The histogram is drawn within PLOT_INTERVAL_S of the rows; wait for it before loading it.
    wait_until(lambda: httpx.get(f"{plot}/plot/latest.png", timeout=5).status_code == 200, 60, "the first histogram", 0.2)
    targets: list[tuple[str, str, str, Callable[[int], Any] | None]] = [
        (HEALTH, "GET", f"{pipeline.url('metric_api')}/health", None),
        ("GET /plot/latest.png", "GET", f"{plot}/plot/latest.png", None),
        ("GET /metrics/summary", "GET", f"{pipeline.url('metric_api')}/metrics/summary", None),
        (PREDICT, "POST", f"{model_api}/predict", lambda n: {"features": rows[n % len(rows)]}),
    ]
    pids = pids or {}
    windows: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in targets}
    latencies: dict[str, list[float]] = {label: [] for label, *_ in targets}
    for round_ in range(rounds):
        for label, method, url, body in targets[round_ % len(targets) :] + targets[: round_ % len(targets)]:
            say(f"http: {label}, {clients} {kind} clients for {seconds:g}s (round {round_ + 1} of {rounds})")
            groups_before = _predict_groups(model_api) if label == PREDICT else None
            cpu_before = cpu_use(pids)
            figures, taken = asyncio.run(_load(url, method, body, clients, seconds, kind))
            cpu_after = cpu_use(pids)
            served = figures["requests"]
            figures["cpu_ms_per_req"] = {
                name: round((after - before) / served * 1000, 3)
                for name, after in cpu_after.items()
                if served and after is not None and (before := cpu_before.get(name)) is not None
            }
            if groups_before is not None:
                groups, requests = (now - then for now, then in zip(_predict_groups(model_api), groups_before, strict=True))
                figures["requests_per_group"] = round(requests / groups, 2) if groups else None
            windows[label].append(figures)
            latencies[label].extend(taken)
    results = []
    for label, *_ in targets:
        runs = windows[label]
        ok = sum(run["ok"] for run in runs)
        ratios = [
            run["req_per_s"] / health["req_per_s"]
            for run, health in zip(runs, windows[HEALTH], strict=True)
            if run["req_per_s"] is not None and health["req_per_s"]
        ]
        processes = dict.fromkeys(name for run in runs for name in run["cpu_ms_per_req"])
        result = {
            "endpoint": label,
            "clients": clients,
            "client": kind,
            "rounds": runs,
            "ok": ok,
            "errors": sum(run["errors"] for run in runs),
            "req_per_s": rounded(median([run["req_per_s"] for run in runs if run["req_per_s"] is not None])),
            "of_health": rounded(median(ratios), 3),
            "of_health_range": [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None,
            "p50_ms": rounded(percentile(latencies[label], 50), 2),
            "p99_ms": rounded(percentile(latencies[label], 99), 2),
            "max_ms": rounded(max(latencies[label]) if latencies[label] else None, 2),
            "loadgen_cpu_share": rounded(median([run["loadgen_cpu_share"] for run in runs if run["loadgen_cpu_share"]]), 2),
            "loadgen_cpu_ms_per_req": rounded(
                median([run["loadgen_cpu_ms_per_req"] for run in runs if run["loadgen_cpu_ms_per_req"] is not None]), 3
            ),
            "cpu_ms_per_req": {
                name: rounded(median([run["cpu_ms_per_req"][name] for run in runs if name in run["cpu_ms_per_req"]]), 3)
                for name in processes
            },
        }
        if label == PREDICT:
            result["requests_per_group"] = rounded(
                median([run["requests_per_group"] for run in runs if run.get("requests_per_group")]), 2
            )
        results.append(result)
        if ok == 0:
            problems.append(f"http: {label} answered no request successfully ({runs[0]['error_kinds']})")
    return results
