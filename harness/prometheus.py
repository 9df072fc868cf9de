"""A real Prometheus (Debian's ``prometheus`` package) for tests: scraping the services of a run,
with deploy/prometheus's rules made quick (every ``for:`` shortened, evaluated every second), and
its HTTP API to ask what it sees and which alerts fire."""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from harness.processes import REPO_ROOT, free_port, wait_until

RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
INSTALL = "apt-get install -y prometheus (make test does it when run as root), or set PROMETHEUS_BIN / PROMTOOL_BIN"


class PrometheusMissing(RuntimeError):
    """No Prometheus binary here; the message says how to get one."""


def _binary(name: str, setting: str) -> Path:
    found = os.environ.get(setting) or shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if not found:
        raise PrometheusMissing(f"no {name} on PATH: {INSTALL}")
    return Path(found)


def promtool() -> Path:
    return _binary("promtool", "PROMTOOL_BIN")


def quick_rules(target: Path, for_s: int = 1) -> list[Path]:
    """deploy/prometheus's rule files with every ``for:`` at ``for_s`` seconds and every group
    evaluated each second, written under ``target``: the same expressions, fired without the wait."""
    written = []
    for source in sorted(RULES_DIR.glob("*.yml")):
        rules = yaml.safe_load(source.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = f"{for_s}s"
        path = target / source.name
        path.write_text(yaml.safe_dump(rules, sort_keys=False))
        written.append(path)
    return written


class Prometheus:
    """``prometheus`` scraping ``targets`` (job -> ["host:port", ...]) every second, with the rules."""

    def __init__(self, workdir: Path, targets: dict[str, list[str]]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = quick_rules(workdir)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(path) for path in rules],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]} for job, hosts in targets.items()],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "Prometheus":
        binary = _binary("prometheus", "PROMETHEUS_BIN")
        args = [
            str(binary),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, 30, f"Prometheus to be ready on {self.url} (its log: {self.log})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"Prometheus exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "Prometheus":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the API
    def api(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = answer.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus answered {answer.status_code} to {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) of ``expr``; an expression that errors fails."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_up(self) -> dict[str, bool]:
        return {t["labels"]["job"]: t["health"] == "up" for t in self.api("targets")["activeTargets"]}

    def firing(self) -> dict[str, list[dict[str, str]]]:
        """The alerts firing now, by name: each one's labels."""
        alerts: dict[str, list[dict[str, str]]] = {}
        for alert in self.api("alerts")["alerts"]:
            if alert["state"] == "firing":
                alerts.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return alerts


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel of a Grafana dashboard, rows' panels included."""
    queries: list[tuple[str, str]] = []
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        queries.extend((panel.get("title", ""), target["expr"]) for target in panel.get("targets", []) if "expr" in target)
    return queries
