"""Checks of the container setup: deploy/compose.yml, deploy/Dockerfile, .env.example.

They read the files only; no Docker engine is needed. `docker compose config` is run
as well when the docker client has the compose plugin.
"""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY_DIR / "compose.yml"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"
ENV_EXAMPLE = DEPLOY_DIR / ".env.example"

APP_PORTS = {"features_api": 8001, "model_api": 8002, "metric_api": 8003, "plot_api": 8004}
APP_SERVICES = sorted(APP_PORTS)
SERVICES_WITH_LOGS = ["metric_api", "plot_api"]

# ${NAME}, ${NAME:?message}, ${NAME:-default}, ...; "$$" is a literal dollar.
COMPOSE_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
# The arguments of FROM: [--platform=...] image [AS name]
FROM_ARGUMENTS = re.compile(
    r"(?:--\S+\s+)*(?P<image>\S+)(?:\s+AS\s+(?P<name>\S+))?", re.IGNORECASE
)

Instruction = tuple[str, str]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw_line in path.read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return instructions


class Stage(NamedTuple):
    parent: str  # an image, or the name of an earlier stage
    instructions: list[Instruction]  # its own, starting with its FROM


def dockerfile_stages(path: Path) -> dict[str, Stage]:
    """The build stages of a Dockerfile by name (an unnamed stage by its index)."""
    stages: dict[str, Stage] = {}
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "FROM":
            match = FROM_ARGUMENTS.fullmatch(arguments)
            assert match, f"{path}: cannot read FROM {arguments}"
            stages[match["name"] or str(len(stages))] = Stage(match["image"], [])
        elif not stages:
            assert keyword == "ARG", f"{path}: {keyword} before the first FROM"
            continue
        current = list(stages.values())[-1]
        current.instructions.append((keyword, arguments))
    return stages


def target_instructions(target: str) -> list[Instruction]:
    """What building `--target target` runs: its stage's chain of parents, oldest first."""
    stages = dockerfile_stages(DOCKERFILE)
    assert target in stages, f"{DOCKERFILE} has no stage {target!r}"
    chain: list[Instruction] = []
    while target in stages:
        chain[:0] = stages[target].instructions
        target = stages[target].parent
    return chain


def last_arguments(instructions: list[Instruction], keyword: str) -> str:
    """The arguments of the last `keyword` instruction: the one in effect."""
    found = [arguments for found, arguments in instructions if found == keyword]
    assert found, f"no {keyword} instruction"
    return found[-1]


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """The ENV settings of a Dockerfile (KEY=value form)."""
    env: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            for assignment in arguments.split():
                key, _, value = assignment.partition("=")
                env[key] = value.strip("\"'")
    return env


def first_index(instructions: list[Instruction], keyword: str, *words: str) -> int:
    """Position of the first `keyword` instruction whose arguments contain all `words`."""
    for index, (found, arguments) in enumerate(instructions):
        if found == keyword and all(word in arguments for word in words):
            return index
    raise AssertionError(f"no {keyword} instruction with {words}")


def env_example_names() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            names.add(line.split("=", 1)[0].removeprefix("export ").strip())
    return names


# --- compose.yml ---------------------------------------------------------------------


def test_compose_defines_the_broker_and_the_four_services(compose):
    assert set(compose["services"]) == {"rabbitmq", *APP_SERVICES}


@pytest.mark.parametrize("service", APP_SERVICES)
def test_service_builds_its_target_of_the_dockerfile(compose, service):
    build = compose["services"][service]["build"]
    context = (DEPLOY_DIR / build["context"]).resolve()
    assert context == REPO_ROOT, "the build context is the repository root"
    assert (context / build["dockerfile"]).is_file()
    assert (context / build["dockerfile"]) == DOCKERFILE
    assert build["target"] == service
    assert service in dockerfile_stages(DOCKERFILE), f"{DOCKERFILE} has no stage {service!r}"


def test_rabbitmq_has_a_healthcheck(compose):
    test = compose["services"]["rabbitmq"]["healthcheck"]["test"]
    assert test[0] == "CMD" and "rabbitmq-diagnostics" in test


@pytest.mark.parametrize("service", APP_SERVICES)
def test_service_waits_for_a_healthy_broker(compose, service):
    depends_on = compose["services"][service]["depends_on"]
    assert depends_on["rabbitmq"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_service_has_a_healthcheck(compose, service):
    in_compose = compose["services"][service].get("healthcheck", {}).get("test")
    if in_compose:
        assert "/health" in " ".join(in_compose)
        return
    healthcheck = dict(target_instructions(service)).get("HEALTHCHECK")
    assert healthcheck, f"{service}: no healthcheck in compose.yml nor in its Dockerfile target"
    assert f"http://127.0.0.1:{APP_PORTS[service]}/health" in healthcheck


def test_published_ports_are_bound_to_localhost(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"


def test_compose_contains_no_literal_credentials():
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "guest" not in text.lower()
    assert "RABBITMQ_DEFAULT_PASS: ${RABBITMQ_PASSWORD:?" in text


@pytest.mark.parametrize("service", SERVICES_WITH_LOGS)
def test_logs_are_bind_mounted(compose, service):
    assert "../logs:/app/logs" in compose["services"][service]["volumes"]
    assert compose["services"][service]["environment"]["LOGS_DIR"] == "/app/logs"


def test_compose_variables_are_in_env_example():
    used = set(COMPOSE_VARIABLE.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
    assert used, "compose.yml is expected to take its credentials from deploy/.env"
    missing = used - env_example_names()
    assert not missing, f"compose.yml uses variables that {ENV_EXAMPLE.name} lacks: {missing}"


def test_docker_compose_config_accepts_the_file():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client installed")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    if version.returncode != 0:
        pytest.skip("the docker client has no compose plugin (`docker compose version` fails)")
    # `config` only resolves and validates the file: it needs no Docker engine.
    result = subprocess.run(
        [docker, "compose", "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE),
         "config", "--format", "json"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    amqp_url = resolved["services"]["model_api"]["environment"]["AMQP_URL"]
    assert amqp_url.startswith("amqp://") and amqp_url.endswith("@rabbitmq:5672/")


# --- deploy/Dockerfile ----------------------------------------------------------------


def test_one_dockerfile_for_all_services():
    assert DOCKERFILE.is_file()
    leftovers = sorted(REPO_ROOT.glob("services/**/Dockerfile"))
    assert not leftovers, f"copies of deploy/Dockerfile would drift from it: {leftovers}"


def test_dockerfile_uses_a_slim_python_base():
    stages = dockerfile_stages(DOCKERFILE)
    earlier: set[str] = set()
    for name, stage in stages.items():
        if stage.parent not in earlier:
            assert re.fullmatch(r"python:[\w.]*-slim", stage.parent), f"{name}: {stage.parent}"
        earlier.add(name)


def test_targets_share_one_base_stage():
    stages = dockerfile_stages(DOCKERFILE)
    parents = {stages[service].parent for service in APP_SERVICES}
    assert len(parents) == 1 and parents <= stages.keys(), f"targets built on {parents}"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_target_cmd_runs_the_service_module(service):
    cmd = last_arguments(target_instructions(service), "CMD")
    assert json.loads(cmd) == ["python", "-m", f"services.{service}"]


@pytest.mark.parametrize("service", APP_SERVICES)
def test_service_module_exists(service, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    assert importlib.util.find_spec(f"services.{service}.__main__") is not None


@pytest.mark.parametrize("service", APP_SERVICES)
def test_service_app_imports(service):
    result = subprocess.run(
        [sys.executable, "-c", f"import services.{service}.app"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("service", APP_SERVICES)
def test_target_runs_as_a_non_root_user(service):
    user = last_arguments(target_instructions(service), "USER")
    assert user.split(":")[0] not in {"root", "0"}, f"{service} would run as root"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_target_healthcheck_asks_its_own_port(service):
    healthcheck = last_arguments(target_instructions(service), "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert all(option.startswith("--") for option in options.split()), healthcheck
    command = json.loads(command)  # exec form: no shell in between
    assert command[0] == "python"
    assert f"http://127.0.0.1:{APP_PORTS[service]}/health" in " ".join(command)


@pytest.mark.parametrize("service", APP_SERVICES)
def test_target_sets_unbuffered_python(service):
    env = dockerfile_env(target_instructions(service))
    assert env.get("PYTHONUNBUFFERED") == "1"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_target_listens_on_all_interfaces_on_its_port(service):
    instructions = target_instructions(service)
    env = dockerfile_env(instructions)
    port = str(APP_PORTS[service])
    assert env.get("HTTP_HOST") == "0.0.0.0"
    # FEATURES_PORT, MODEL_PORT, ...: if the image sets it, it must agree with EXPOSE.
    assert env.get(f"{service.split('_')[0].upper()}_PORT", port) == port
    assert ("EXPOSE", port) in instructions


@pytest.mark.parametrize("service", APP_SERVICES)
def test_target_installs_dependencies_before_copying_code(service):
    instructions = target_instructions(service)
    copy_dependency_files = first_index(instructions, "COPY", "pyproject.toml", "constraints.txt")
    install_dependencies = first_index(instructions, "RUN", "pip install", "-c constraints.txt")
    copy_code = first_index(instructions, "COPY", "services")
    assert copy_dependency_files < install_dependencies < copy_code


def test_model_image_trains_the_model_at_build_time():
    instructions = target_instructions("model_api")
    train = first_index(instructions, "RUN", "python -m services.model_api.train")
    assert first_index(instructions, "COPY", "services") < train
