"""A Docker engine for the compose tests and the benchmark's container broker, or the reason why not.

The workplace's stand-in script (shared/tools/docker-standin-images.sh, beside the repository:
never copied into it), run as root, installs Docker, starts dockerd and pulls the images it is
given, or builds stand-ins of them under the same tags where no registry answers.
tests/compose/engine.py builds its engine for the compose stack on these; bench/broker.py its
RabbitMQ 4.x container.
"""

import os
import shutil
import subprocess
from pathlib import Path

from harness.processes import REPO_ROOT

SCRIPT_NAME = "docker-standin-images.sh"
# DOCKER_STANDIN_SCRIPT, else ../shared/tools/ beside the repository (where CI lays it beside its clone);
# a checkout elsewhere sets DOCKER_STANDIN_SCRIPT.
SCRIPT_PLACES = (REPO_ROOT.parent / "shared" / "tools" / SCRIPT_NAME,)


class NoEngine(Exception):
    """No Docker engine with the images needed can be had here; the message says why."""


def standin_script() -> Path | None:
    named = os.environ.get("DOCKER_STANDIN_SCRIPT", "").strip()
    if named:
        if not Path(named).is_file():
            raise NoEngine(f"DOCKER_STANDIN_SCRIPT={named} does not exist")
        return Path(named)
    return next((place for place in SCRIPT_PLACES if place.is_file()), None)


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


def engine_version() -> str | None:
    """The engine's version when `docker info` answers, else None."""
    if shutil.which("docker") is None:
        return None
    try:
        answer = docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    except subprocess.TimeoutExpired:
        return None
    version = answer.stdout.strip()
    return version if answer.returncode == 0 and version and "error" not in version.lower() else None


def image_present(image: str) -> bool:
    return docker("image", "inspect", image).returncode == 0


def run_standin_script(images: list[str]) -> str:
    """The stand-in script (as root) for ``images``: what it did, in one line; NoEngine when it fails."""
    script = standin_script()
    assert script is not None
    print(f"\nCOMPOSE running {script} (installs and starts Docker, base images or their stand-ins)", flush=True)
    try:
        result = subprocess.run(["bash", str(script), *images], capture_output=True, text=True, timeout=1500, check=False)
    except subprocess.TimeoutExpired:
        raise NoEngine(f"{script} did not finish within 25 minutes") from None
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("docker-standin:")]
    for line in lines:
        print(f"COMPOSE   {line}", flush=True)
    if result.returncode != 0:
        reason = lines[-1] if lines else (result.stdout + result.stderr).strip()[-300:]
        raise NoEngine(f"{script} failed: {reason}")
    return f"{script.name}: {lines[-1].removeprefix('docker-standin: ') if lines else 'done'}"
