"""One compose project driven from a test: deploy/'s files, a .env made for the test, its own
project name, published ports and logs folder, so that it collides with nothing on the machine.

Any set of compose files can be driven (the default layout, + compose.scale.yml, + another
override): the test's own override, written from the resolved configuration of that set,
moves every fixed host port to a free one on 127.0.0.1 and every bind mount of the
repository's logs/ to the test's folder, and switches the demo's loop off (every row is then
one the test published). Containers, ports, health and restarts are read from `docker inspect`.
"""

import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from harness.checker import Verdict, check_all, row_ids
from harness.processes import wait_until
from services.common.files import METRIC_LOG
from services.features_api.publisher import MAX_BURST
from tests.compose.engine import Engine
from tests.deploy_files import COMPOSE_FILE, OPTIONAL_SETTINGS, REPO_ROOT, env_example

PROJECT_PREFIX = "mqm-test-"
REPO_LOGS = REPO_ROOT / "logs"
# The demo's loop would add rows nobody published: off, every row is one the test published.
TEST_ENVIRONMENT = {"features_api": {"FEATURES_LOOP": "false"}}
# A project of this prefix older than this is a crashed run's: removed before a new one starts.
STALE_AFTER_S = 3 * 3600
LABEL = "com.docker.compose.project"
MANAGEMENT_PORT = 15672  # RabbitMQ's management UI and API


@dataclass
class Container:
    """One container of the project, as `docker inspect` shows it."""

    id: str
    image: str
    service: str
    number: int
    status: str  # running, restarting, exited, ...
    health: str  # healthy, unhealthy, starting; "" without a health check
    pid: int
    restarts: int
    user: str
    ports: dict[int, tuple[str, int]]  # container port: (host ip, host port)

    @classmethod
    def inspected(cls, data: dict[str, Any]) -> "Container":
        state = data["State"]
        ports = {}
        for key, bindings in (data["NetworkSettings"]["Ports"] or {}).items():
            if bindings:
                ports[int(key.split("/")[0])] = (bindings[0]["HostIp"], int(bindings[0]["HostPort"]))
        labels = data["Config"]["Labels"]
        return cls(
            id=data["Id"],
            image=data["Image"],
            service=labels["com.docker.compose.service"],
            number=int(labels["com.docker.compose.container-number"]),
            status=state["Status"],
            health=(state.get("Health") or {}).get("Status", ""),
            pid=state["Pid"],
            restarts=data["RestartCount"],
            user=data["Config"]["User"],
            ports=ports,
        )

    @property
    def ready(self) -> bool:
        return self.status == "running" and self.health in ("healthy", "")


@dataclass
class ComposeStack:
    engine: Engine
    work: Path  # the test's folder: .env, override, logs, the log of every compose command
    app_uid: int
    project: str = field(default_factory=lambda: f"{PROJECT_PREFIX}{uuid.uuid4().hex[:8]}")
    files: list[Path] = field(default_factory=lambda: [COMPOSE_FILE])
    published: list[str] = field(default_factory=list)  # every id published into this project
    settings: dict[str, str] = field(default_factory=dict)  # the .env

    def __post_init__(self) -> None:
        self.logs = self.work / "logs"
        self.env_file = self.work / "compose.env"
        self.override = self.work / "compose.test.yml"
        self.log = self.work / "compose.log"
        self.make_logs_dir(self.logs)
        self.write_env()
        self.use(*self.files)

    # -- set-up ----------------------------------------------------------------------------

    def write_env(self, **changes: str) -> None:
        """A .env made for the test: every setting of deploy/.env.example, the empty ones
        (the password, tokens; not the optional ones) filled with fresh secrets, the services' uid
        the logs folder's."""
        if not self.settings:
            self.settings = {
                name: value or ("" if name in OPTIONAL_SETTINGS else secrets.token_urlsafe(18))
                for name, value in env_example().items()
            }
            self.settings.update(APP_UID=str(self.app_uid), APP_GID=str(self.app_uid))
        self.settings.update(changes)
        self.env_file.write_text("".join(f"{name}={value}\n" for name, value in self.settings.items()))

    def make_logs_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(path, self.app_uid, self.app_uid)

    def use(self, *files: Path) -> None:
        """Drive this set of compose files from now on (the next `up` applies it)."""
        self.files = list(files)
        self.override.write_text(self.override_for(self.compose_json("config", "--format", "json", override=False)))

    def override_for(self, config: dict[str, Any]) -> str:
        """The test's override (YAML; JSON values are YAML too) for a resolved configuration."""
        lines = ["services:"]
        for name, service in config["services"].items():
            lines.append(f"  {name}:")
            ports = service.get("ports", [])
            if any(port.get("published") for port in ports):  # a fixed host port: a free one instead
                free = [f"127.0.0.1::{port['target']}" for port in ports]
                lines.append(f"    ports: !override {json.dumps(free)}")
            binds = []
            for volume in service.get("volumes", []):
                source = Path(volume.get("source", ""))
                if volume["type"] == "bind" and source.is_relative_to(REPO_LOGS):
                    moved = self.logs / source.relative_to(REPO_LOGS)
                    self.make_logs_dir(moved)
                    binds.append({**volume, "source": str(moved)})
            if binds:  # merged with the file's own by target: these replace them
                lines.append(f"    volumes: {json.dumps(binds)}")
            if name in TEST_ENVIRONMENT:
                lines.append(f"    environment: {json.dumps(TEST_ENVIRONMENT[name])}")
            if lines[-1] == f"  {name}:":
                lines.pop()
        return "\n".join(lines) + "\n"

    # -- compose and docker ----------------------------------------------------------------

    def command(self, *args: str, override: bool = True) -> list[str]:
        files = [*self.files, self.override] if override else self.files
        options = ["--ansi", "never", "--env-file", str(self.env_file), "-p", self.project]
        return [*self.engine.compose, *options, *(f"-f{path}" for path in files), *args]

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True, override: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run one compose command (none of the caller's variables inherited); its output goes to the log."""
        command = self.command(*args, override=override)
        environment = {name: os.environ[name] for name in ("PATH", "HOME", "DOCKER_HOST") if name in os.environ}
        environment.update(env or {})
        started = time.monotonic()
        result = subprocess.run(
            command, capture_output=True, text=True, cwd=REPO_ROOT, env=environment, timeout=timeout, check=False
        )
        with self.log.open("a") as log:
            log.write(f"\n$ {' '.join(args)}  ({time.monotonic() - started:.1f} s, exit {result.returncode})\n")
            log.write(result.stderr + result.stdout)
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def compose_json(self, *args: str, override: bool = True) -> Any:
        return json.loads(self.compose(*args, override=override).stdout)

    def services(self) -> list[str]:
        return sorted(self.compose_json("config", "--format", "json")["services"])

    def containers(self, service: str | None = None) -> list[Container]:
        """The project's containers (of one service), by service and replica number."""
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={LABEL}={self.project}"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.split()  # fmt: skip
        if not ids:
            return []
        inspected = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, timeout=30, check=False)
        if inspected.returncode != 0:  # one went away in between (a scale-down, a replacement)
            return self.containers(service)
        found = [Container.inspected(data) for data in json.loads(inspected.stdout)]
        return sorted((c for c in found if service in (None, c.service)), key=lambda c: (c.service, c.number))

    def container(self, service: str, number: int = 1) -> Container:
        [found] = [c for c in self.containers(service) if c.number == number]
        return found

    def wait_ready(self, timeout: float) -> float:
        """Wait until every service of the file set has its containers running and healthy; the seconds it took."""
        started = time.monotonic()
        wanted = set(self.services())

        def ready() -> bool:
            containers = self.containers()
            return {c.service for c in containers} == wanted and all(c.ready for c in containers)

        try:
            wait_until(ready, timeout, "every container running and healthy", interval=1)
        except AssertionError as exc:
            states = ", ".join(f"{c.service}-{c.number} {c.status}/{c.health}" for c in self.containers())
            raise AssertionError(f"{exc}: {states}\n{self.service_logs(tail=15)}") from None
        return time.monotonic() - started

    def image_sizes(self) -> str:
        """The size of each container's image, in MB (the four built ones and the broker's)."""
        sizes = {}
        for container in self.containers():
            size = subprocess.run(
                ["docker", "image", "inspect", "--format", "{{.Size}}", container.image],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout.strip()  # fmt: skip
            sizes[container.service] = f"{int(size) / 1e6:.0f} MB"
        return ", ".join(f"{service} {size}" for service, size in sizes.items())

    def wait_answering(self, timeout: float) -> float:
        """Wait until every container runs and answers on its published port — the services'
        /health 200 (which needs their broker connection), the broker's management API — without
        waiting for Docker's own next health probe (every 10 s); the seconds it took."""
        started = time.monotonic()

        def answers(container: Container) -> bool:
            if container.status != "running":
                return False
            if MANAGEMENT_PORT in container.ports:
                (host, port), path = container.ports[MANAGEMENT_PORT], "/api/overview"
            elif len(container.ports) == 1:
                [(host, port)], path = container.ports.values(), "/health"
            else:
                return container.ready  # nothing to ask over HTTP: Docker's health check decides
            auth = (self.settings["RABBITMQ_USER"], self.settings["RABBITMQ_PASSWORD"])
            try:
                return httpx.get(f"http://{host}:{port}{path}", auth=auth, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(lambda: all(answers(c) for c in self.containers()), timeout, "every container to answer", 0.5)
        return time.monotonic() - started

    def url(self, service: str, number: int = 1) -> str:
        """The service's published URL (a restarted container may be given another free port)."""
        container = self.container(service, number)
        [(host, port)] = container.ports.values()
        return f"http://{host}:{port}"

    def kill(self, service: str, number: int = 1) -> Container:
        """kill -9 of the container's main process, from the host (a crash, not `docker stop`):
        the restart policy decides what happens next. Returns the container as it was."""
        container = self.container(service, number)
        assert container.status == "running" and container.pid > 0, container
        os.kill(container.pid, 9)
        return container

    def service_logs(self, tail: int = 50) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), check=False).stdout

    def down(self, *args: str) -> None:
        self.compose("down", "--remove-orphans", *args, timeout=300)

    # -- HTTP -----------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        token = self.settings.get("API_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, service: str, path: str, number: int = 1) -> httpx.Response:
        return httpx.get(f"{self.url(service, number)}{path}", headers=self.headers(), timeout=30)

    def burst(self, count: int) -> list[str]:
        """POST /features/publish: ``count`` samples, in requests of at most MAX_BURST, each confirmed
        on the broker when it answers."""
        ids: list[str] = []
        while len(ids) < count:
            answer = httpx.post(
                f"{self.url('features_api')}/features/publish",
                json={"count": min(MAX_BURST, count - len(ids))},
                headers=self.headers(),
                timeout=120,
            )
            assert answer.status_code == 200, answer.text
            ids += answer.json()["ids"]
        self.published += ids
        return ids

    def management(self, method: str, path: str, **kwargs: Any) -> Any:
        """The broker's management API (published like everything else)."""
        answer = httpx.request(
            method,
            f"{self.url('rabbitmq')}/api{path}",
            auth=(self.settings["RABBITMQ_USER"], self.settings["RABBITMQ_PASSWORD"]),
            timeout=30,
            **kwargs,
        )
        answer.raise_for_status()
        return answer.json()

    def queues(self) -> dict[str, tuple[int, int]]:
        """(messages, consumers) of every queue (the broker's figures lag by up to 5 s: its statistics interval)."""
        return {q["name"]: (q.get("messages", 0), q.get("consumers", 0)) for q in self.management("GET", "/queues/%2F")}

    def dead_letters(self) -> list[str]:
        """What waits in the dead-letter queues: "<queue>: <reason>" (read, left in place)."""
        found = []
        for name, (messages, _) in self.queues().items():
            if name.endswith(".dlq") and messages:
                body = {"count": 20, "ackmode": "ack_requeue_true", "encoding": "auto"}
                for message in self.management("POST", f"/queues/%2F/{name}/get", json=body):
                    headers = message["properties"].get("headers", {})
                    found.append(f"{name}: {headers.get('x-dlq-reason', message['payload'][:200])}")
        return found

    # -- the rows -------------------------------------------------------------------------

    def csvs(self) -> list[Path]:
        """Every metric_log.csv under the logs folder (one per shard of the join)."""
        return sorted(self.logs.rglob(METRIC_LOG))

    def verdict(self) -> Verdict:
        """harness.checker's categories over every published id and the rows of every CSV."""
        return check_all(self.published, self.csvs())

    def settled(self, timeout: float = 180) -> Verdict:
        """Wait until every published id has its row and the work queues are empty; the verdict.
        (What the dead-letter queues hold is not counted here: ``dead_letters``.)"""
        wanted = set(self.published)
        wait_until(lambda: wanted <= {row for csv in self.csvs() for row in row_ids(csv)}, timeout, "a row for every id", 0.5)
        wait_until(self.work_queues_empty, 60, "the work queues to be empty", 1)
        return self.verdict()

    def work_queues_empty(self) -> dict[str, tuple[int, int]] | None:
        queues = self.queues()
        return queues if all(messages == 0 for name, (messages, _) in queues.items() if not name.endswith(".dlq")) else None


def remove_stale_projects(engine: Engine) -> None:
    """Projects of this prefix left by a run that could not tear down (killed, machine stopped)."""
    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={LABEL}", "--format", '{{.Label "' + LABEL + '"}} {{.CreatedAt}}'],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout.splitlines()  # fmt: skip
    now = time.time()
    stale = set()
    for line in listed:
        project, _, created = line.partition(" ")
        if project.startswith(PROJECT_PREFIX) and now - parse_created(created) > STALE_AFTER_S:
            stale.add(project)
    for project in sorted(stale):
        print(f"COMPOSE removing {project}, left by an earlier run", flush=True)
        subprocess.run(
            [*engine.compose, "-p", project, "down", "-v", "--rmi", "local"], capture_output=True, timeout=300, check=False
        )


def parse_created(created: str) -> float:
    """`docker ps`'s CreatedAt ("2026-12-02 07:49:53 +0000 UTC") as epoch seconds."""
    return datetime.strptime(" ".join(created.split()[:3]), "%Y-%m-%d %H:%M:%S %z").timestamp()


def remove_work(work: Path, keep: bool) -> None:
    if keep:
        print(f"COMPOSE kept {work} (the compose log, the services' logs and outputs)", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)


def timed(what: str, seconds: float) -> None:
    print(f"COMPOSE {what}: {seconds:.1f} s", flush=True)
