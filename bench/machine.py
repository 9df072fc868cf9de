"""The machine the benchmark ran on, and what its processes use: memory (VmRSS) and CPU, from /proc."""

import os
import platform
import subprocess
import threading
from pathlib import Path
from typing import Any

from bench.broker import broker_version
from harness.pipeline import Pipeline
from harness.processes import ServiceProcess


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (None if it is gone)."""
    try:
        with Path(f"/proc/{pid}/status").open() as f:
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
    found = subprocess.run(["pgrep", "-f", "beam.smp.*rabbit"], capture_output=True, text=True, check=False).stdout.split()
    return int(found[0]) if found else None


def service_pids(pipeline: Pipeline) -> dict[str, int | None]:
    """The pid of each service of ``pipeline`` that runs as a process here."""
    return {name: service.process.pid for name, service in pipeline.services.items() if service.process is not None}


def cpu_use(pids: dict[str, int | None]) -> dict[str, float | None]:
    return {name: (cpu_s(pid) if pid is not None else None) for name, pid in pids.items()}


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
        "rabbitmq": broker_version(amqp_url),
        "kernel": platform.release(),
    }
