"""Running the real services as processes, and a TCP proxy to stand between them and the broker."""

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import httpx
import pandas as pd

from services.common.broker import FEATURES, Y_PRED, Y_TRUE, dlq_name
from services.common.files import METRIC_LOG
from services.plot_api.charts import CHARTS

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("features_api", "model_api", "metric_api", "plot_api")
PORT_SETTING = {
    "features_api": "FEATURES_PORT",
    "model_api": "MODEL_PORT",
    "metric_api": "METRIC_PORT",
    "plot_api": "PLOT_PORT",
}
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class ServiceProcess:
    """One service, started as a user starts it: ``python -m services.<name>``."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, cwd: Path = REPO_ROOT) -> None:
        self.name = name
        self.env = env
        self.cwd = cwd  # where `services` is imported from
        self.port = int(env[PORT_SETTING[name]])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "ServiceProcess":
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def health(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url}/health", timeout=2)
        except httpx.TransportError:
            return None

    def wait_healthy(self, timeout: float = 30) -> None:
        def healthy() -> bool:
            assert self.process is not None and self.process.poll() is None, (
                f"{self.name} exited with {self.process and self.process.returncode}:\n{self.output()}"
            )
            answer = self.health()
            return answer is not None and answer.status_code == 200

        wait_until(healthy, timeout, f"{self.name} /health to answer 200")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Stop the process; return its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"{self.name} did not stop within {timeout}s of {sig!r}:\n{self.output()[-3000:]}")
        return self.process.returncode


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 to the broker, in a thread; ``cut()`` drops every connection."""

    def __init__(self, target_port: int, listen_port: int | None = None) -> None:
        self.target_port = target_port
        self.port = listen_port or free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stalled: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> "TcpProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, broker_writer}

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    if writer in self._stalled:
                        continue  # a black hole: the connection stays open, nothing passes
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(pump(client_reader, broker_writer), pump(broker_reader, client_writer))
        self._writers -= {client_writer, broker_writer}

    def cut(self) -> None:
        def close_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(close_all)

    def stall(self) -> None:
        """From now on, pass nothing on the connections open now (new ones work)."""

        def stall_all() -> None:
            self._stalled |= self._writers

        self._loop.call_soon_threadsafe(stall_all)

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def run_to_exit(name: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a service that is expected to refuse to start; its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", f"services.{name}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def service_env(**settings: str) -> dict[str, str]:
    """The environment of a service process: this one's, minus our settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if k not in PORT_SETTING.values()}
    env.update(settings)
    return env


def stop_all(services: list[ServiceProcess], *, tracebacks_allowed: bool = False) -> None:
    """Stop every started service with SIGTERM, then fail if any did not shut down cleanly.

    uvicorn re-raises the signal once its shutdown is complete, so a clean stop exits
    by SIGTERM after logging "Application shutdown complete".
    """
    problems = []
    for service in reversed(services):
        if service.process is None:
            continue
        try:
            status = service.stop()
        except AssertionError as exc:
            problems.append(str(exc))
            continue
        output = service.output()
        if status not in (0, -signal.SIGTERM) or "Application shutdown complete" not in output:
            problems.append(f"{service.name} exited {status}:\n{output[-3000:]}")
        elif not tracebacks_allowed and "Traceback" in output:
            problems.append(f"{service.name} logged a traceback:\n{output[-3000:]}")
    assert not problems, "unclean shutdown:\n" + "\n".join(problems)


class JsonStub:
    """A tiny HTTP server on 127.0.0.1, a stand-in peer for a test: ``GET path`` answers
    ``status`` with ``body`` as JSON (both may be changed while it runs), ``POST path``
    records the JSON it was sent in ``posted`` and answers 204; anything else is a 404."""

    def __init__(self, path: str, body: Any = None, status: int = 200) -> None:
        self.path, self.body, self.status = path, body, status
        self.posted: list[Any] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                payload = json.dumps(stub.body).encode()
                self.send_response(stub.status if self.path == stub.path else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path == stub.path:
                    stub.posted.append(json.loads(body))
                self.send_response(204 if self.path == stub.path else 404)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="json-stub")

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def __enter__(self) -> "JsonStub":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}."


def queue_names() -> list[str]:
    """A pipeline's queues and their dead-letter queues, without the prefix."""
    return [name for base in (FEATURES, Y_TRUE, Y_PRED) for name in (base, dlq_name(base))]


def delete_queues(amqp_url: str, prefix: str) -> None:
    """Remove a test's queues (and their dead-letter queues) from the broker."""

    async def delete() -> None:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for name in queue_names():
                await channel.queue_delete(f"{prefix}{name}")

    asyncio.run(delete())


def queue_state(amqp_url: str, prefix: str) -> dict[str, tuple[int, int]]:
    """(messages ready, consumers) of each of a pipeline's queues and dead-letter queues."""

    async def read() -> dict[str, tuple[int, int]]:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            state = {}
            for name in queue_names():
                queue = await channel.declare_queue(f"{prefix}{name}", passive=True)
                result = queue.declaration_result
                state[name] = (result.message_count or 0, result.consumer_count or 0)
            return state

    return asyncio.run(read())


# plot_api's chart routes and the file each is written to in LOGS_DIR
CHART_ROUTES = {chart.url: chart.file for chart in CHARTS.values()}


@dataclass
class Pipeline:
    """The four services of one test, on their own queues (QUEUE_PREFIX) and LOGS_DIR."""

    services: dict[str, ServiceProcess]
    logs_dir: Path
    model_path: Path
    amqp_url: str
    prefix: str

    def url(self, name: str) -> str:
        return self.services[name].url

    @property
    def csv(self) -> Path:
        return self.logs_dir / METRIC_LOG

    def rows(self) -> pd.DataFrame:
        if not self.csv.exists():
            return pd.DataFrame({"id": []}, dtype=str)
        return pd.read_csv(self.csv, dtype={"id": str})

    def sent(self) -> int:
        return httpx.get(f"{self.url('features_api')}/features/status").json()["sent"]

    def wait_all_joined(self, timeout: float = 60) -> pd.DataFrame:
        """Wait until every sample sent so far has its row, and return the rows."""
        wait_until(lambda: len(self.rows()) == self.sent(), timeout, "one CSV row per sample sent")
        return self.rows()

    def burst(self, count: int, timeout: float = 60) -> list[str]:
        answer = httpx.post(f"{self.url('features_api')}/features/publish", json={"count": count}, timeout=timeout)
        assert answer.status_code == 200, answer.text
        return answer.json()["ids"]

    def queues(self) -> dict[str, tuple[int, int]]:
        return queue_state(self.amqp_url, self.prefix)

    def settled_charts(self, timeout: float = 30) -> dict[str, httpx.Response]:
        """plot_api's charts once served and no longer changing (drawn from every row there is):
        the same ETags before and after more than two refresh periods (PLOT_INTERVAL_S=0.5).
        A chart fetched earlier may still be redrawn from rows plot_api had not read yet."""

        def get_all() -> dict[str, httpx.Response]:
            return {route: httpx.get(f"{self.url('plot_api')}{route}") for route in CHART_ROUTES}

        def settled() -> dict[str, httpx.Response] | None:
            before = get_all()
            time.sleep(1.2)
            after = get_all()
            served = all(answer.status_code == 200 for answer in after.values())
            same = all(before[route].headers.get("etag") == after[route].headers.get("etag") for route in CHART_ROUTES)
            return after if served and same else None

        return wait_until(settled, timeout, "the charts to be served and settled")

    def replicas(self, name: str) -> list[ServiceProcess]:
        """Every running process of one service (several for model_api with ``model_replicas``)."""
        return [service for service in self.services.values() if service.name == name]

    def restart(self, key: str, sig: int = signal.SIGKILL) -> None:
        """Stop one service (kill -9 by default) and start it again, as a supervisor would.

        ``key`` is its key in ``services``: its name, or e.g. "model_api-2" for a replica."""
        old = self.services[key]
        old.stop(sig)
        self.services[key] = ServiceProcess(old.name, old.env, self.logs_dir, old.cwd).start()
        self.services[key].wait_healthy()


@contextlib.contextmanager
def running_pipeline(
    work_dir: Path, model_path: Path, amqp_url: str, *, model_replicas: int = 1, **settings: str
) -> Iterator[Pipeline]:
    """Start the four services against ``amqp_url`` (or, via AMQP_URL in ``settings``, a proxy).

    ``model_replicas`` > 1 starts that many model_api processes, each on its own port and
    log folder, all on the same queues: ``services["model_api"]``, ``["model_api-2"]``, ...
    """
    prefix = unique_prefix()
    logs_dir = work_dir / "logs"
    logs_dir.mkdir(exist_ok=True)
    ports = {setting: str(free_port()) for setting in PORT_SETTING.values()}
    env = service_env(
        **{
            "AMQP_URL": amqp_url,
            "QUEUE_PREFIX": prefix,
            "LOGS_DIR": str(logs_dir),
            "MODEL_PATH": str(model_path),
            "FEATURES_INTERVAL_S": "3600",
            "PLOT_INTERVAL_S": "0.5",
            "METRIC_API_URL": f"http://127.0.0.1:{ports['METRIC_PORT']}",
            **ports,
            **settings,
        }
    )
    services = {name: ServiceProcess(name, env, work_dir) for name in SERVICES}
    for replica in range(2, model_replicas + 1):
        replica_dir = work_dir / f"model_api-{replica}"
        replica_dir.mkdir(exist_ok=True)
        replica_env = {**env, PORT_SETTING["model_api"]: str(free_port())}
        services[f"model_api-{replica}"] = ServiceProcess("model_api", replica_env, replica_dir)
    pipeline = Pipeline(services, logs_dir, model_path, amqp_url, prefix)
    try:
        for service in services.values():
            service.start()
        for service in services.values():
            # They all start at once: each extra process slows everyone's start-up.
            service.wait_healthy(timeout=30 + 10 * (model_replicas - 1))
        yield pipeline
    finally:
        try:
            stop_all(list(pipeline.services.values()))
        finally:
            delete_queues(amqp_url, prefix)
