"""Running the real services as processes: start one, wait for its health, stop it cleanly."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("features_api", "model_api", "metric_api", "plot_api")
PORT_SETTING = {
    "features_api": "FEATURES_PORT",
    "model_api": "MODEL_PORT",
    "metric_api": "METRIC_PORT",
    "plot_api": "PLOT_PORT",
}
T = TypeVar("T")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and not one this process handed out before: the ports of a
    run's services are all taken before any of them starts, so the system could give one twice."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(check: Callable[[], T | Literal[False] | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy, and return that; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | Literal[False] | None = None
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
                raise AssertionError(f"{self.name} did not stop within {timeout}s of {sig!r}:\n{self.output()[-3000:]}") from None
        return self.process.returncode


def run_to_exit(name: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a service that is expected to refuse to start; its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", f"services.{name}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def service_env(**settings: str) -> dict[str, str]:
    """The environment of a service process: this one's, minus our settings (the ports, and an
    API_TOKEN a developer's shell may export: a test that wants one says so), plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if k not in (*PORT_SETTING.values(), "API_TOKEN")}
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
