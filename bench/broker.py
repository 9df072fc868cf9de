"""The broker a benchmark section runs against: its version, as the broker itself announces it, and a
RabbitMQ 4.x in a container beside the host's (``python -m bench.run --broker-4x``).

The container runs the image deploy/compose.yml names for its broker. The Docker engine and the
image come the way tests/compose gets them (harness/docker_engine.py): an engine that answers and
has the image is used as it is; else, as root, the workplace's stand-in script
(shared/tools/docker-standin-images.sh, beside the repository, never copied into it) starts
Docker and builds a stand-in under that tag (Debian trixie's rabbitmq-server 4.0) where no
registry answers; else an answering engine pulls it. What cannot be had is one sentence.
"""

import asyncio
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aio_pika

from harness import docker_engine as engine
from services.common.ensure_broker import unreachable

# The broker image deploy/compose.yml runs (tests/unit/bench checks that they agree).
COMPOSE_BROKER_IMAGE = "rabbitmq:4.4-management"
START_TIMEOUT_S = 120.0


class NoBroker(Exception):
    """The container broker cannot be had or did not start; the message says why."""


def broker_version(amqp_url: str) -> str:
    """The version the broker announces in the AMQP handshake (its server properties), e.g. "3.10.8";
    "unknown (why)" when it cannot be asked. The broker measured, wherever it runs (a container too)."""

    async def ask() -> str:
        connection = await aio_pika.connect(amqp_url.split(",")[0].strip(), timeout=10)
        async with connection:
            assert connection.transport is not None  # connected
            version = connection.transport.connection.server_properties.get("version", "?")
            return version.decode() if isinstance(version, bytes) else str(version)

    try:
        return asyncio.run(ask())
    except Exception as exc:  # noqa: BLE001 - the version is a label in the report: whatever fails, "unknown"
        return f"unknown ({type(exc).__name__}: {exc})"


def redacted(amqp_url: str) -> str:
    """``amqp_url`` without its password, for the report and the JSON."""
    parts = urlsplit(amqp_url)
    if parts.password is None:
        return amqp_url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def engine_with(image: str) -> str:
    """A Docker engine that answers and has ``image``; what it took, for the report. NoBroker says why not."""
    if engine.engine_version() is not None and engine.image_present(image):
        return "engine running, image present"
    try:
        script = engine.standin_script()
    except engine.NoEngine as exc:
        raise NoBroker(str(exc)) from None
    root = os.geteuid() == 0
    if (script is None or not root) and engine.engine_version() is None:
        without = f"{script} needs root" if script else f"the stand-in script {engine.SCRIPT_NAME} is not beside this repository"
        raise NoBroker(f"no Docker engine answers (`docker info` fails), and {without}")
    try:
        if script is not None and root:
            how = engine.run_standin_script([image])
        else:
            engine.docker("pull", "-q", image, timeout=300)
            how = f"pulled {image}"
    except (engine.NoEngine, subprocess.TimeoutExpired) as exc:
        raise NoBroker(str(exc)) from None
    if engine.engine_version() is None or not engine.image_present(image):
        raise NoBroker(f"{image} could not be had ({how})")
    return how


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ContainerBroker:
    amqp_url: str  # with a password made for this container
    image: str
    name: str  # the container's
    how: str  # what it took to get the engine and the image


@contextmanager
def rabbitmq_container(image: str | None = None, start_timeout_s: float = START_TIMEOUT_S) -> Iterator[ContainerBroker]:
    """A fresh RabbitMQ in a container (``image``, else the one deploy/compose.yml names), its AMQP port
    published on 127.0.0.1 at a free port, with an account of its own; removed afterwards whatever happens."""
    image = image or COMPOSE_BROKER_IMAGE
    how = engine_with(image)
    port, password = free_port(), secrets.token_hex(12)
    name = f"bench-rabbitmq-{os.getpid()}-{port}"
    started = engine.docker(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5672",
        "-e", "RABBITMQ_DEFAULT_USER=bench", "-e", f"RABBITMQ_DEFAULT_PASS={password}",
        image,
        timeout=120,
    )  # fmt: skip
    if started.returncode != 0:
        raise NoBroker(f"docker run {image} failed: {started.stderr.strip()[-500:]}")
    try:
        url = f"amqp://bench:{password}@127.0.0.1:{port}/"
        wait_until_it_answers(url, name, start_timeout_s)
        yield ContainerBroker(url, image, name, how)
    finally:
        engine.docker("rm", "-f", name, timeout=120)


def wait_until_it_answers(url: str, name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    reason = unreachable(url)
    while reason is not None:
        running = engine.docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        if running != "true":
            logs = engine.docker("logs", "--tail", "20", name)
            raise NoBroker(f"the container {name} stopped before its broker answered: {(logs.stdout + logs.stderr)[-800:]}")
        if time.monotonic() > deadline:
            raise NoBroker(f"the broker in {name} did not answer within {timeout_s:.0f} s: {reason}")
        time.sleep(1)
        reason = unreachable(url)
