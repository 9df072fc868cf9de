"""The images, run without Docker: the files deploy/Dockerfile puts into them (what it
copies, through .dockerignore, and the model its build stage trains), each target's ENV,
CMD and HEALTHCHECK, and the environment deploy/compose.yml gives the services — against
the real broker.

The Dockerfile's absolute paths (/app, /tmp/model, ...) are placed under a temporary root,
the dependency venv is this one, and the services listen on 127.0.0.1 instead of the
image's 0.0.0.0 (a test here listens on loopback only). A building Docker engine is the
one thing this leaves out.
"""

import functools
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.checker import check
from harness.processes import PORT_SETTING, ServiceProcess, free_port, stop_all, wait_until
from harness.queues import delete_queues, unique_prefix
from tests.deploy_files import (
    APP_SERVICES,
    COMPOSE_FILE,
    REPO_ROOT,
    copy_sources,
    dockerfile_env,
    dockerfile_stages,
    healthcheck_command,
    last_arguments,
    left_out_of_context,
    load_compose,
    target_instructions,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TOKEN = "the-compose-api-token-0123"


class ImageTree:
    """The file systems of the four images, side by side under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, image_path: str) -> Path:
        """Where an absolute path of the image is here."""
        return self.root / image_path.lstrip("/")

    def copy_from_context(self, source: str, destination: Path) -> None:
        """COPY from the build context: only what .dockerignore lets in."""
        origin = REPO_ROOT / source
        files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
        for file in files:
            relative = file.relative_to(REPO_ROOT).as_posix()
            if left_out_of_context(relative):
                continue
            target = destination / file.relative_to(origin) if origin.is_dir() else destination
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)

    def build(self) -> None:
        """The steps of the runtime stages that put files in place (pip's venv is ours)."""
        stages = dockerfile_stages()
        workdir = self.path(last_arguments(stages["base"].instructions, "WORKDIR"))
        for keyword, arguments in stages["base"].instructions:
            if keyword == "COPY":
                sources, destination, stage = copy_sources(arguments)
                if stage is None:
                    for source in sources:
                        self.copy_from_context(source, workdir / destination)
        (workdir / "logs").mkdir()  # RUN mkdir logs && chown ...
        # The model stage's training, with its absolute paths under the root ...
        train = shlex.split(last_arguments(stages["model_build"].instructions, "RUN"))
        train = [str(self.path(word)) if word.startswith("/") else word for word in train]
        assert train[0] == "python"
        subprocess.run([sys.executable, *train[1:]], cwd=workdir, env=self.env("model_build"), check=True, timeout=120)
        # ... and the model image's copy of its output.
        for keyword, arguments in stages["model_api"].instructions:
            if keyword == "COPY":
                [source], destination, stage = copy_sources(arguments)
                assert stage == "model_build"
                shutil.copytree(self.path(source), self.path(destination))

    def env(self, target: str) -> dict[str, str]:
        """The ENV of a target, its absolute paths under the root, PATH to this venv."""
        env = {"PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
        for key, value in dockerfile_env(target_instructions(target)).items():
            if key != "PATH":
                env[key] = str(self.path(value)) if value.startswith("/") else value
        return env


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> ImageTree:
    tree = ImageTree(tmp_path_factory.mktemp("image"))
    tree.build()
    return tree


@pytest.fixture(scope="module")
def services(tree: ImageTree, amqp_url: str) -> Iterator[dict[str, ServiceProcess]]:
    compose = load_compose(COMPOSE_FILE)
    prefix = unique_prefix()
    ports = {service: free_port() for service in APP_SERVICES}
    workdir = tree.path(last_arguments(dockerfile_stages()["base"].instructions, "WORKDIR"))
    started = {}
    for name in APP_SERVICES:
        env = tree.env(name)
        compose_env = compose["services"][name]["environment"]
        env.update(
            {
                "HTTP_HOST": "127.0.0.1",
                PORT_SETTING[name]: str(ports[name]),
                # compose's values, with the broker and metric_api of this test
                "AMQP_URL": amqp_url,
                "LOGS_DIR": str(tree.path(compose_env["LOGS_DIR"])),
                "METRIC_API_URL": f"http://127.0.0.1:{ports['metric_api']}",
                "QUEUE_PREFIX": prefix,
                "PLOT_INTERVAL_S": "0.5",
                "FEATURES_INTERVAL_S": "3600",
                "API_TOKEN": TOKEN,  # compose requires one: the health checks must pass with it set
            }
        )
        started[name] = ServiceProcess(name, env, tree.root, cwd=workdir)
    try:
        for service in started.values():
            # The image's CMD is what ServiceProcess runs (tests/test_deploy.py checks it).
            assert last_arguments(target_instructions(service.name), "CMD") == f'["python", "-m", "services.{service.name}"]'
            service.start()
        for service in started.values():
            wait_until(functools.partial(healthcheck_passes, service), 60, f"{service.name}'s HEALTHCHECK to pass")
        yield started
    finally:
        try:
            stop_all(list(started.values()))
        finally:
            delete_queues(amqp_url, prefix)


def healthcheck(service: ServiceProcess) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, run as Docker runs it: in WORKDIR, with the image's env."""
    assert service.process is not None and service.process.poll() is None, service.output()[-3000:]
    return subprocess.run(
        healthcheck_command(service.name),
        capture_output=True,
        text=True,
        cwd=service.cwd,
        env=service.env,
        timeout=30,
        check=False,
    )


def healthcheck_passes(service: ServiceProcess) -> bool:
    return healthcheck(service).returncode == 0


def test_the_services_run_from_the_image_files_alone(services: dict[str, ServiceProcess]) -> None:
    workdir = services["model_api"].cwd
    assert sorted(p.name for p in workdir.iterdir()) == ["logs", "model", "services"]
    assert not list(workdir.rglob("__pycache__")) and not list((workdir / "services").rglob("*.pkl"))
    # model_api serves the model its build stage trained, at the image's MODEL_PATH.
    info = httpx.get(f"{services['model_api'].url}/model/info").json()
    assert info["model_path"] == services["model_api"].env["MODEL_PATH"]
    assert Path(info["model_path"]).is_relative_to(workdir / "model")
    # plot_api's dashboard page is package data: it made it through .dockerignore.
    page = httpx.get(f"{services['plot_api'].url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_a_burst_through_the_image_files_gives_one_row_per_id(services: dict[str, ServiceProcess]) -> None:
    url = f"{services['features_api'].url}/features/publish"
    assert httpx.post(url, json={"count": 50}, timeout=60).status_code == 401  # API_TOKEN is set, as compose sets it
    answer = httpx.post(url, json={"count": 50}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    ids = answer.json()["ids"]
    logs = Path(services["metric_api"].env["LOGS_DIR"])
    csv = logs / "metric_log.csv"

    def all_rows() -> bool:
        verdict = check(ids, csv)
        return verdict.rows == len(ids) and verdict.lost == 0

    wait_until(all_rows, 60, "a row for each of the 50 ids in the bind-mounted logs folder")
    verdict = check(ids, csv)
    assert (verdict.lost, verdict.duplicated, verdict.unexpected) == (0, 0, 0), verdict
    wait_until((logs / "error_distribution.png").exists, 30, "plot_api's PNG in the logs folder")
