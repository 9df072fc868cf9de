"""The benchmark (issue 4): ``python -m bench.run`` (``make bench``).

Starts the four real services (real processes, the real RabbitMQ, a fresh QUEUE_PREFIX and a
temporary LOGS_DIR), drives them, prints Markdown tables and writes the same figures as JSON
to ``bench/results/<UTC timestamp>.json`` and ``bench/results/latest.json``.

Sections: machine; throughput of a burst (with lost/duplicated ids and each service's RSS);
end-to-end latency at fixed offered rates; HTTP load (an async httpx load loop of our own);
plot_api alone on CSVs of growing size.

It is not a test: a slow machine only gives slow figures. It exits 1 only when something is
broken (lost, duplicated or unexpected ids, a service that fails or does not stop cleanly, a
section that cannot finish), and 130 when interrupted. Services are stopped (SIGTERM) and
their queues deleted in every case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aio_pika  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from services.common.ensure_broker import unreachable  # noqa: E402
from services.common.files import METRIC_LOG  # noqa: E402
from services.common.metric_rows import METRIC_LOG_HEADER, format_columns  # noqa: E402
from services.common.settings import Settings  # noqa: E402
from services.model_api.train import train  # noqa: E402
from services.plot_api.charts import CHARTS  # noqa: E402
from tests.faults.checker import check  # noqa: E402
from tests.support import (  # noqa: E402
    Pipeline,
    ServiceProcess,
    free_port,
    running_pipeline,
    service_env,
    stop_all,
    wait_until,
)

MAX_PUBLISH_COUNT = 10_000  # samples per POST /features/publish in the throughput burst
STALL_S = 60.0  # no new CSV row for this long (after publishing ended) = the pipeline is stuck
SCALE_APPENDS = 3  # incremental refreshes measured per CSV size
SCALE_APPEND_ROWS = 100
TAIL_POLL_S = 0.002
COUNT_POLL_S = 0.1

_interrupted = False


def _on_signal(signum: int, _frame: Any) -> None:
    global _interrupted
    if _interrupted:
        return  # already stopping: let the clean-up finish
    _interrupted = True
    raise KeyboardInterrupt(f"signal {signum}")


def say(message: str) -> None:
    """Progress, on stderr (the tables go to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Small tools


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (None if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def broker_pid() -> int | None:
    """The local RabbitMQ's Erlang VM (beam.smp), if the broker runs on this machine."""
    found = subprocess.run(["pgrep", "-f", "beam.smp.*rabbit"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def cpu_use(pids: dict[str, int | None]) -> dict[str, float | None]:
    return {name: (cpu_s(pid) if pid is not None else None) for name, pid in pids.items()}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


class RssSampler(threading.Thread):
    """Samples every service's VmRSS every ``interval`` s; keeps the peak overall and per window."""

    def __init__(self, services: dict[str, ServiceProcess], interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.services = services
        self.interval = interval
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.overall: dict[str, float] = {}
        self.window: dict[str, float] = {}

    def sample_once(self) -> None:
        for name, service in self.services.items():
            if service.process is None:
                continue
            value = rss_mb(service.process.pid)
            if value is None:
                continue
            with self._lock:
                self.overall[name] = max(self.overall.get(name, 0.0), value)
                self.window[name] = max(self.window.get(name, 0.0), value)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample_once()

    def take_window(self) -> dict[str, float]:
        """The peaks since the last call (or the start), and start a new window."""
        self.sample_once()
        with self._lock:
            window, self.window = self.window, {}
        return {name: round(value, 1) for name, value in window.items()}

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


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


def wait_for_progress(
    progress: Callable[[], int], target: int, what: str, stall_s: float = STALL_S, report_every: float = 10.0
) -> bool:
    """Wait until ``progress() >= target``; give up (False) once it has not moved for ``stall_s``."""
    last, last_change, last_report = progress(), time.monotonic(), time.monotonic()
    while last < target:
        time.sleep(COUNT_POLL_S)
        now_value = progress()
        now = time.monotonic()
        if now_value != last:
            last, last_change = now_value, now
        elif now - last_change > stall_s:
            say(f"{what}: stuck at {last}/{target} for {stall_s:.0f}s; giving up")
            return False
        if now - last_report >= report_every:
            say(f"{what}: {last}/{target}")
            last_report = now
    return True


# --------------------------------------------------------------------------------------
# 1. Machine


def rabbitmq_version(amqp_url: str) -> str:
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl:
        try:
            done = subprocess.run([rabbitmqctl, "version"], capture_output=True, text=True, timeout=20)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip().splitlines()[-1]
        except (OSError, subprocess.TimeoutExpired):
            pass

    async def ask() -> str:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            properties = connection.transport.connection.server_properties
            version = properties.get("version", "?")
            product = properties.get("product", "")
            if isinstance(version, bytes):
                version = version.decode()
            if isinstance(product, bytes):
                product = product.decode()
            return f"{version} ({product}, from the AMQP handshake)".replace("(, ", "(")

    try:
        return asyncio.run(ask())
    except Exception as exc:  # noqa: BLE001 - only a label
        return f"unknown ({exc})"


def machine(amqp_url: str) -> dict[str, Any]:
    cpu_model, mem_total = "unknown", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_gb": mem_total,
        "python": platform.python_version(),
        "rabbitmq": rabbitmq_version(amqp_url),
        "kernel": platform.release(),
    }


# --------------------------------------------------------------------------------------
# 2. Throughput


def throughput(pipeline: Pipeline, rss: RssSampler | None, samples: int, problems: list[str]) -> dict[str, Any]:
    features = pipeline.url("features_api")
    counter = LineCounter(pipeline.csv)
    baseline = counter.rows()
    target = baseline + samples
    done_at: list[float] = []
    current = [baseline]
    stop = threading.Event()

    def watch() -> None:  # notes the moment the CSV has every row, even while we are still publishing
        while not stop.is_set():
            current[0] = counter.rows()
            if current[0] >= target:
                done_at.append(time.time())
                return
            time.sleep(COUNT_POLL_S)

    if rss is not None:
        rss.take_window()
    pids = {name: service.process.pid for name, service in pipeline.services.items() if service.process is not None}
    pids["rabbitmq"] = broker_pid()
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
        name: round((cpu_after[name] - before) / samples * 1000, 3)
        for name, before in cpu_before.items()
        if before is not None and cpu_after.get(name) is not None
    }
    time.sleep(1.0)  # let metric_api settle after its last batch
    metric_pid = pipeline.services["metric_api"].process.pid  # type: ignore[union-attr]
    metric_after = rss_mb(metric_pid)

    verdict = check(ids, pipeline.csv)
    result: dict[str, Any] = {
        "samples": samples,
        "publish_requests": math.ceil(samples / MAX_PUBLISH_COUNT),
        "publish_s": round(publish_s, 3),
        "publish_samples_per_s": round(samples / publish_s, 1) if publish_s > 0 else None,
        "complete": complete,
        "end_to_end_s": round(done_at[0] - started, 3) if done_at else None,
        "samples_per_s": round(samples / (done_at[0] - started), 1) if done_at else None,
        "published": verdict.published,
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
        problems.append(
            f"throughput: lost {verdict.lost}, duplicated {verdict.duplicated}, unexpected {verdict.unexpected} ids"
        )
    return result


# --------------------------------------------------------------------------------------
# 3. Latency


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
                    count = due - len(ids)
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


# --------------------------------------------------------------------------------------
# 4. HTTP


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
) -> dict[str, Any]:
    """``clients`` loops, each sending its next request as soon as its last one is answered."""
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
    return {
        "requests": done,
        "ok": len(latencies),
        "errors": failed,
        "error_kinds": errors,
        "seconds": round(elapsed, 2),
        "req_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": rounded(percentile(latencies, 50), 2),
        "p99_ms": rounded(percentile(latencies, 99), 2),
        "max_ms": rounded(max(latencies) if latencies else None, 2),
        # the load generator's own CPU: near 1 core busy means it, not the service, is the limit
        "loadgen_cpu_share": round(cpu / elapsed, 2) if elapsed > 0 else None,
        "loadgen_cpu_ms_per_req": round(cpu / done * 1000, 3) if done else None,
    }


def http_load(
    pipeline: Pipeline, clients: int, seconds: float, kind: str, problems: list[str]
) -> list[dict[str, Any]]:
    from sklearn.datasets import load_diabetes

    rows = load_diabetes().data.tolist()
    plot = pipeline.url("plot_api")
    # The histogram is drawn within PLOT_INTERVAL_S of the rows; wait for it before loading it.
    wait_until(
        lambda: httpx.get(f"{plot}/plot/latest.png", timeout=5).status_code == 200, 60, "the first histogram", 0.2
    )
    targets: list[tuple[str, str, str, Callable[[int], Any] | None]] = [
        ("GET /plot/latest.png", "GET", f"{plot}/plot/latest.png", None),
        ("GET /metrics/summary", "GET", f"{pipeline.url('metric_api')}/metrics/summary", None),
        ("POST /predict", "POST", f"{pipeline.url('model_api')}/predict", lambda n: {"features": rows[n % len(rows)]}),
        ("GET /health (metric_api)", "GET", f"{pipeline.url('metric_api')}/health", None),
    ]
    results = []
    for label, method, url, body in targets:
        say(f"http: {label}, {clients} {kind} clients for {seconds:g}s")
        result = {"endpoint": label, "clients": clients, "client": kind, **asyncio.run(_load(url, method, body, clients, seconds, kind))}
        results.append(result)
        if result["ok"] == 0:
            problems.append(f"http: {label} answered no request successfully ({result['error_kinds']})")
    return results


# --------------------------------------------------------------------------------------
# 5. Scale of data


def synthetic_rows(count: int, first_ts: float, rng: np.random.Generator) -> bytes:
    """CSV lines (no header) as metric_api writes them: id, y_true, y_pred, absolute_error."""
    y_true = rng.integers(25, 347, size=count).astype(float)
    y_pred = y_true + rng.normal(0.0, 50.0, size=count)
    ids = [f"{ts:.6f}" for ts in (first_ts + np.arange(count) * 1e-4).tolist()]
    return format_columns(ids, y_true.tolist(), y_pred.tolist()).encode()


def render_stats(service: ServiceProcess) -> dict[str, tuple[float, float]]:
    """(sum, count) of plot_api's render times: the whole refresh (``plot_render_seconds``,
    key "refresh") and each chart (``plot_chart_render_seconds{chart=...}``); empty if unreadable."""
    try:
        text = httpx.get(f"{service.url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("plot_render_seconds", "plot_chart_render_seconds"):
            continue
        for sample in family.samples:
            kind = sample.name.rsplit("_", 1)[-1]
            if kind in ("sum", "count"):
                found.setdefault(sample.labels.get("chart", "refresh"), {})[kind] = float(sample.value)
    return {key: (v["sum"], v["count"]) for key, v in found.items() if {"sum", "count"} <= v.keys()}


def scale_one(work: Path, rows: int, problems: list[str]) -> dict[str, Any]:
    logs = work / f"scale-{rows}"
    logs.mkdir()
    rng = np.random.default_rng(rows)
    csv = logs / METRIC_LOG
    began = time.perf_counter()
    with csv.open("wb") as f:
        f.write((METRIC_LOG_HEADER + "\n").encode())
        first_ts = time.time() - rows * 1e-4 - 60
        for start in range(0, rows, 200_000):
            chunk = min(200_000, rows - start)
            f.write(synthetic_rows(chunk, first_ts + start * 1e-4, rng))
    say(f"scale: wrote {rows} rows ({csv.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - began:.1f}s")
    next_ts = time.time()

    env = service_env(
        LOGS_DIR=str(logs),
        PLOT_INTERVAL_S="1",
        PLOT_PORT=str(free_port()),
        METRIC_API_URL=f"http://127.0.0.1:{free_port()}",
    )
    service = ServiceProcess("plot_api", env, logs)
    url = f"{service.url}/plot/latest.png"
    result: dict[str, Any] = {"rows": rows, "csv_mb": round(csv.stat().st_size / 1e6, 1)}
    try:
        started = time.perf_counter()
        service.start()

        def first_png() -> httpx.Response | None:
            assert service.process is not None and service.process.poll() is None, (
                f"plot_api exited:\n{service.output()[-2000:]}"
            )
            try:
                answer = httpx.get(url, timeout=10)
            except httpx.TransportError:
                return None
            return answer if answer.status_code == 200 else None

        first = wait_until(first_png, 600, f"plot_api's first histogram of {rows} rows", 0.02)
        result["first_png_s"] = round(time.perf_counter() - started, 3)
        first_stats = render_stats(service)
        total, count = first_stats.get("refresh", (None, None))
        result["first_render_s"] = rounded(total, 3) if count == 1 else None
        pid = service.process.pid  # type: ignore[union-attr]
        result["rss_after_first_mb"] = rounded(rss_mb(pid))

        etag = first.headers.get("etag")
        walls: list[float] = []
        renders: dict[str, list[float]] = {key: [] for key in ("refresh", *CHARTS)}
        for _ in range(SCALE_APPENDS):
            before = render_stats(service)
            with csv.open("ab") as f:
                appended = time.perf_counter()
                f.write(synthetic_rows(SCALE_APPEND_ROWS, next_ts, rng))
                f.flush()
            next_ts += SCALE_APPEND_ROWS * 1e-4 + 1

            def changed() -> str | None:
                answer = httpx.get(url, headers={"If-None-Match": etag or ""}, timeout=10)
                new = answer.headers.get("etag")
                return new if answer.status_code == 200 and new != etag else None

            etag = wait_until(changed, 120, f"the histogram to change after appending to {rows} rows", 0.01)
            walls.append(time.perf_counter() - appended)
            after = render_stats(service)
            for key, times in renders.items():
                if key in before and key in after and after[key][1] > before[key][1]:
                    times.append((after[key][0] - before[key][0]) / (after[key][1] - before[key][1]))
        result["refresh_wall_s"] = rounded(float(np.median(walls)), 3)
        result["refresh_wall_max_s"] = rounded(max(walls), 3)
        refresh = renders.pop("refresh")
        result["refresh_render_s"] = rounded(float(np.median(refresh)), 3) if refresh else None
        result["refresh_render_max_s"] = rounded(max(refresh), 3) if refresh else None
        result["chart_render_s"] = {key: rounded(float(np.median(t)), 3) if t else None for key, t in renders.items()}
        result["rss_after_refresh_mb"] = rounded(rss_mb(pid))
        histogram = logs / CHARTS["histogram"].file
        result["png_bytes"] = histogram.stat().st_size if histogram.exists() else None
    finally:
        try:
            stop_all([service])
        except AssertionError as exc:
            if not _interrupted:
                problems.append(f"scale {rows}: {exc}")
        csv.unlink(missing_ok=True)  # up to ~60 MB each; the logs stay for a look afterwards
    return result


# --------------------------------------------------------------------------------------
# Output


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:,.1f}".rstrip("0").rstrip(".")
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    out = [f"### Benchmark {results['started_at']}", ""]
    m = results.get("machine")
    if m:
        out += [
            f"**Machine:** {m['nproc']} cores ({m['cpu_model']}), {m['mem_total_gb']} GB RAM, "
            f"Python {m['python']}, RabbitMQ {m['rabbitmq']} on the same machine, Linux {m['kernel']}. "
            "The load generator shares these cores with the services and the broker.",
            "",
        ]
    t = results.get("throughput")
    if t:
        out += [
            f"**Throughput** — a burst of {t['samples']:,} samples through `POST /features/publish` "
            f"({t['publish_requests']} sequential request(s) of ≤ {MAX_PUBLISH_COUNT:,} each); "
            "from just before the first request to the moment the CSV has every row.",
            "",
            md_table(
                ["samples", "end-to-end samples/s", "end-to-end s", "publish-only samples/s", "lost", "duplicated", "unexpected"],
                [[t["samples"], t["samples_per_s"], t["end_to_end_s"], t["publish_samples_per_s"], t["lost"], t["duplicated"], t["unexpected"]]],
            ),
            "",
        ]
        peaks = t.get("peak_rss_mb", {})
        overall = results.get("peak_rss_mb", {})
        names = sorted(set(peaks) | set(overall))
        if names:
            out += [
                "**Memory (VmRSS, MB)** — sampled every 0.2 s.",
                "",
                md_table(
                    ["service", "peak during the burst", "peak over the whole pipeline run", "after the burst"],
                    [
                        [n, peaks.get(n), overall.get(n), t["metric_api_rss_after_mb"] if n == "metric_api" else None]
                        for n in names
                    ],
                ),
                "",
            ]
        cpu = t.get("cpu_ms_per_sample", {})
        if cpu:
            out += [
                "**CPU per sample during the burst** (user + system, from /proc; ms of one core per sample).",
                "",
                md_table(["process", "CPU ms / sample"], [[n, v] for n, v in cpu.items()] + [["total", round(sum(cpu.values()), 3)]]),
                "",
            ]
    lat = results.get("latency")
    if lat:
        out += [
            "**Latency** — end to end, from the sample's id (its publish timestamp) to its row first seen "
            "in the CSV by a reader polling appended bytes every 2 ms (so it includes up to ~2 ms of polling "
            "granularity); offered by one `POST /features/publish` per 10 ms tick with the samples due "
            "(achieved = samples ÷ the longer of the window and the time it took to publish them).",
            "",
            md_table(
                ["offered /s", "achieved /s", "seconds", "samples", "p50 ms", "p95 ms", "p99 ms", "max ms"],
                [
                    [r["offered_per_s"], r["achieved_per_s"], r["seconds"], r["samples"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["max_ms"]]
                    for r in lat
                ],
            ),
            "",
        ]
    http = results.get("http")
    if http:
        out += [
            (
                f"**HTTP** — our own async httpx load loop, not wrk/locust: {http[0]['clients']} concurrent clients "
                "(one `httpx.AsyncClient` each, kept-alive)"
                if http[0]["client"] == "httpx"
                else f"**HTTP** — our own async load loop, not wrk/locust: {http[0]['clients']} concurrent clients, "
                "each a minimal HTTP/1.1 client on one kept-alive asyncio connection (`--http-client raw`)"
            )
            + f", {results['settings']['http_seconds']:g} s per endpoint after a warm-up, in one Python process "
            "sharing the cores with the services and the broker. The load generator's own CPU is shown "
            "(1.0 = one core, its ceiling): near 1, it, not the service, limits req/s"
            + (
                " — httpx costs 1–2 ms of CPU per request; `--http-client raw` about a tenth of that."
                if http[0]["client"] == "httpx"
                else "."
            ),
            "",
            md_table(
                ["endpoint", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "load-gen CPU (cores)"],
                [
                    [r["endpoint"], r["req_per_s"], r["p50_ms"], r["p99_ms"], r["max_ms"], r["errors"], r["loadgen_cpu_share"]]
                    for r in http
                ],
            ),
            "",
        ]
    scale = results.get("scale")
    if scale:
        out += [
            "**Scale of data** — plot_api alone (PLOT_INTERVAL_S=1) started on a CSV of N rows: time from starting "
            f"the process to the first `/plot/latest.png` 200 (start-up + full read + render); then {SCALE_APPENDS}× "
            f"{SCALE_APPEND_ROWS} rows appended: median time until the ETag changes (includes waiting up to 1 s "
            "for the next refresh tick), median `plot_render_seconds` of that refresh (read new rows + render and write "
            "the histogram and one of the two recent-rows charts, drawn in turn) and, of it, the median `plot_chart_render_seconds` of each chart.",
            "",
            md_table(
                ["rows", "CSV MB", "first PNG s", "first render s", "RSS after first MB", "refresh wall s", "refresh render s",
                 *(f"{chart.replace('_', ' ')} s" for chart in CHARTS), "RSS after refresh MB"],
                [
                    [s["rows"], s["csv_mb"], s.get("first_png_s"), s.get("first_render_s"), s.get("rss_after_first_mb"), s.get("refresh_wall_s"), s.get("refresh_render_s")]
                    + [s.get("chart_render_s", {}).get(chart) for chart in CHARTS]
                    + [s.get("rss_after_refresh_mb")]
                    for s in scale
                ],
            ),
            "",
        ]
    out.append(f"Reproduce: `make bench` (here: `python -m bench.run {results['argv']}`).")
    return "\n".join(out)


# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def numbers(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
        return lambda text: [kind(part) for part in text.split(",") if part.strip()]

    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000, help="samples in the throughput burst (50000)")
    parser.add_argument("--rates", type=numbers(float), default=[10.0, 200.0, 500.0], help="offered rates, samples/s (10,200,500)")
    parser.add_argument("--rate-seconds", type=float, default=30.0, help="seconds per offered rate (30)")
    parser.add_argument("--http-seconds", type=float, default=10.0, help="seconds of load per endpoint (10)")
    parser.add_argument("--http-clients", type=int, default=50, help="concurrent HTTP clients (50)")
    parser.add_argument("--scale-rows", type=numbers(int), default=[10_000, 100_000, 1_000_000], help="CSV sizes for plot_api (10000,100000,1000000)")
    parser.add_argument(
        "--http-client",
        choices=["httpx", "raw"],
        default="raw",
        help="load generator of the HTTP section: httpx.AsyncClient per client (httpx), or a minimal "
        "HTTP/1.1 client on asyncio streams that uses a tenth of the CPU (raw)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny everything, to check the benchmark itself works")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="folder for the JSON (bench/results)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.samples, args.rates, args.rate_seconds = 200, [10.0, 50.0], 3.0
        args.http_seconds, args.http_clients, args.scale_rows = 2.0, 10, [1000]
    return args


def section(name: str, problems: list[str], run: Callable[[], Any]) -> Any:
    """Run one section; a failure is recorded as a problem and the next section still runs."""
    try:
        return run()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001
        if _interrupted:
            raise KeyboardInterrupt from exc
        say(f"{name} failed: {exc}")
        traceback.print_exc(file=sys.stderr)
        problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:2000]}")
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    amqp_url = str(Settings().AMQP_URL)
    if (reason := unreachable(amqp_url)) is not None:
        print(f"bench: no RabbitMQ answers at {amqp_url} ({reason}); `make bench` starts one", file=sys.stderr)
        return 1

    now = datetime.now(UTC)
    results: dict[str, Any] = {
        "started_at": now.isoformat(timespec="seconds"),
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            "samples": args.samples,
            "rates": args.rates,
            "rate_seconds": args.rate_seconds,
            "http_seconds": args.http_seconds,
            "http_clients": args.http_clients,
            "http_client": args.http_client,
            "scale_rows": args.scale_rows,
            "smoke": args.smoke,
            "pipeline_env": {"FEATURES_INTERVAL_S": "3600", "PLOT_INTERVAL_S": "10"},
        },
    }
    problems: list[str] = []
    results["problems"] = problems
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    began = time.monotonic()
    try:
        say(f"machine; work folder {work}")
        results["machine"] = machine(amqp_url)
        model_path = work / "model" / "myfile.pkl"
        model_path.parent.mkdir()
        train(model_path)

        pipeline_dir = work / "pipeline"
        pipeline_dir.mkdir()
        try:
            say("starting the four services")
            with running_pipeline(
                pipeline_dir, model_path, amqp_url, FEATURES_INTERVAL_S="3600", PLOT_INTERVAL_S="10"
            ) as pipeline:
                rss = RssSampler(pipeline.services)
                rss.start()
                all_ids: list[str] = []
                try:
                    t = section("throughput", problems, lambda: throughput(pipeline, rss, args.samples, problems))
                    results["throughput"] = t
                    results["latency"] = section(
                        "latency", problems, lambda: latency(pipeline, args.rates, args.rate_seconds, all_ids, problems)
                    )
                    if all_ids:
                        verdict = check(all_ids, pipeline.csv)
                        results["latency_check"] = {
                            "published": verdict.published,
                            "lost": verdict.lost,
                            "duplicated": verdict.duplicated,
                        }
                        if verdict.lost or verdict.duplicated:
                            problems.append(f"latency: lost {verdict.lost}, duplicated {verdict.duplicated} ids")
                    results["http"] = section(
                        "http", problems, lambda: http_load(pipeline, args.http_clients, args.http_seconds, args.http_client, problems)
                    )
                finally:
                    rss.stop()
                    results["peak_rss_mb"] = {k: round(v, 1) for k, v in rss.overall.items()}
                say("stopping the four services")
        except AssertionError as exc:  # stop_all: a service did not stop cleanly (or failed to start)
            if _interrupted:
                raise KeyboardInterrupt from exc
            problems.append(f"pipeline: {str(exc)[:3000]}")

        scale = []
        for rows in args.scale_rows:
            say(f"scale: plot_api on {rows} rows")
            one = section(f"scale {rows}", problems, lambda rows=rows: scale_one(work, rows, problems))
            if one is not None:
                scale.append(one)
        results["scale"] = scale
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"\nbench: interrupted; services stopped, queues deleted (their logs: {work})", file=sys.stderr)
        return 130
    results["duration_s"] = round(time.monotonic() - began, 1)

    text = report(results)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    payload = json.dumps(results, indent=2) + "\n"
    (args.out / f"{stamp}.json").write_text(payload)
    (args.out / "latest.json").write_text(payload)
    print(f"\nWrote {args.out / (stamp + '.json')} (and latest.json); took {results['duration_s']:.0f}s.")
    if problems:
        print("\n" + "!" * 78, file=sys.stderr)
        print("BENCH FOUND SOMETHING BROKEN:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(f"service logs kept in {work}", file=sys.stderr)
        print("!" * 78, file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
