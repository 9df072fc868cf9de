"""Checks of the container setup: deploy/compose.yml, the service Dockerfiles, .env.example.

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

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY_DIR / "compose.yml"
ENV_EXAMPLE = DEPLOY_DIR / ".env.example"

APP_PORTS = {"features_api": 8001, "model_api": 8002, "metric_api": 8003, "plot_api": 8004}
APP_SERVICES = sorted(APP_PORTS)
SERVICES_WITH_LOGS = ["metric_api", "plot_api"]

# ${NAME}, ${NAME:?message}, ${NAME:-default}, ...; "$$" is a literal dollar.
COMPOSE_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def dockerfile_path(service: str) -> Path:
    return REPO_ROOT / "services" / service / "Dockerfile"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
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


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV settings of a Dockerfile (KEY=value form)."""
    env: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            for assignment in arguments.split():
                key, _, value = assignment.partition("=")
                env[key] = value.strip("\"'")
    return env


def first_index(instructions: list[tuple[str, str]], keyword: str, *words: str) -> int:
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
def test_build_context_and_dockerfile_exist(compose, service):
    build = compose["services"][service]["build"]
    context = (DEPLOY_DIR / build["context"]).resolve()
    assert context == REPO_ROOT, "the build context is the repository root"
    assert (context / build["dockerfile"]).is_file()
    assert (context / build["dockerfile"]) == dockerfile_path(service)


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
    healthcheck = dict(dockerfile_instructions(dockerfile_path(service))).get("HEALTHCHECK")
    assert healthcheck, f"{service}: no healthcheck in compose.yml nor in its Dockerfile"
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


# --- Dockerfiles ---------------------------------------------------------------------


@pytest.mark.parametrize("service", APP_SERVICES)
def test_dockerfile_uses_a_slim_python_base(service):
    instructions = dockerfile_instructions(dockerfile_path(service))
    bases = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert bases
    for base in bases:
        assert re.fullmatch(r"python:[\w.]*-slim(\s+AS\s+\w+)?", base, re.IGNORECASE), base


@pytest.mark.parametrize("service", APP_SERVICES)
def test_dockerfile_cmd_runs_the_service_module(service):
    cmd = dict(dockerfile_instructions(dockerfile_path(service)))["CMD"]
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
def test_dockerfile_runs_as_a_non_root_user(service):
    instructions = dockerfile_instructions(dockerfile_path(service))
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users, "no USER instruction: the service would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}


@pytest.mark.parametrize("service", APP_SERVICES)
def test_dockerfile_sets_unbuffered_python(service):
    env = dockerfile_env(dockerfile_instructions(dockerfile_path(service)))
    assert env.get("PYTHONUNBUFFERED") == "1"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_dockerfile_listens_on_all_interfaces(service):
    instructions = dockerfile_instructions(dockerfile_path(service))
    assert dockerfile_env(instructions).get("HTTP_HOST") == "0.0.0.0"
    assert ("EXPOSE", str(APP_PORTS[service])) in instructions


@pytest.mark.parametrize("service", APP_SERVICES)
def test_dockerfile_installs_dependencies_before_copying_code(service):
    instructions = dockerfile_instructions(dockerfile_path(service))
    copy_dependency_files = first_index(instructions, "COPY", "pyproject.toml", "constraints.txt")
    install_dependencies = first_index(instructions, "RUN", "pip install", "-c constraints.txt")
    copy_code = first_index(instructions, "COPY", "services")
    assert copy_dependency_files < install_dependencies < copy_code


def test_model_image_trains_the_model_at_build_time():
    instructions = dockerfile_instructions(dockerfile_path("model_api"))
    train = first_index(instructions, "RUN", "python -m services.model_api.train")
    assert first_index(instructions, "COPY", "services") < train
