"""Make sure a RabbitMQ answers at AMQP_URL: ``python -m services.common.ensure_broker``.

Used by ``make run`` and ``make test``. If AMQP_URL answers, nothing is done. If it does not
and it names this machine, a local ``rabbitmq-server`` is started (installed first with
apt-get when missing and we are root). Otherwise, or if that fails, one line says what is
wrong and what to do, and the exit status is 1.
"""

import asyncio
import os
import shutil
import subprocess
import sys
import time

import aio_pika
from aio_pika.exceptions import AMQPError, ProbableAuthenticationError
from pydantic_core import Url

from services.common.settings import get_settings

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
START_TIMEOUT_S = 90


class BrokerRefused(Exception):
    """The broker answered but will not let us in: starting another will not help."""


async def _probe(url: str) -> None:
    try:
        connection = await aio_pika.connect(url, timeout=5)
    except ProbableAuthenticationError as exc:
        raise BrokerRefused(str(exc)) from None
    await connection.close()


def unreachable(url: str) -> str | None:
    """Why no broker lets us in at ``url`` (one, or several comma-separated), in one line; None when one does."""
    reasons = []
    for one in url.split(","):
        try:
            asyncio.run(_probe(one.strip()))
        except Exception as exc:  # noqa: BLE001 - any failure means the same here
            reasons.append(f"{type(exc).__name__}: {exc}")
        else:
            return None
    return "; ".join(reasons)


def answers(url: str) -> bool:
    try:
        asyncio.run(_probe(url))
    except BrokerRefused:
        raise
    except (TimeoutError, OSError, AMQPError):
        return False
    return True


def _say(message: str) -> None:
    print(f"ensure_broker: {message}", file=sys.stderr, flush=True)


def _install_rabbitmq() -> bool:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    _say("rabbitmq-server is not installed; installing it with apt-get (a minute or two)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "rabbitmq-server"]):
        if subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
            return False
    return True


def _server_command() -> str | None:
    for candidate in ("rabbitmq-server", "/usr/sbin/rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server"):
        if found := shutil.which(candidate):
            return found
    return None


def main() -> int:
    settings = get_settings()
    brokers = settings.brokers
    try:
        if len(brokers) > 1:
            return _ensure_one_of(brokers)
        return _ensure(brokers[0])
    except BrokerRefused:
        user = brokers[0].username or "guest"
        where = ", ".join(_where(broker) for broker in brokers)
        _say(f"RabbitMQ at {where} refused the login of user {user!r}: fix the user/password in AMQP_URL")
        return 1


def _ensure_one_of(brokers: tuple[Url, ...]) -> int:
    """Several brokers (a cluster): one must answer. None is started here, and never the
    machine's default node: the local cluster is `make cluster`'s (docs/cluster.md)."""
    if any(answers(str(broker)) for broker in brokers):
        return 0
    where = ", ".join(_where(broker) for broker in brokers)
    _say(f"none of the brokers in AMQP_URL answers ({where}); for the local cluster run `make cluster`")
    return 1


def _where(amqp_url: Url) -> str:
    return f"{amqp_url.host}:{amqp_url.port or 5672}"


def _ensure(amqp_url: Url) -> int:
    url = str(amqp_url)
    where = _where(amqp_url)
    if answers(url):
        return 0
    if amqp_url.host not in LOCAL_HOSTS:
        _say(f"no RabbitMQ answers at {where} (AMQP_URL); start it there, or unset AMQP_URL to use a local one")
        return 1
    server = _server_command() or (_install_rabbitmq() and _server_command())
    if not server:
        _say(
            f"no RabbitMQ answers at {where} and rabbitmq-server is not installed: "
            "run `sudo apt-get install -y rabbitmq-server`, or point AMQP_URL at a running broker"
        )
        return 1
    _say(f"no RabbitMQ answers at {where}; starting {server} -detached")
    subprocess.run([server, "-detached"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if answers(url):
            _say(f"RabbitMQ is up at {where}")
            return 0
        time.sleep(1)
    _say(f"started rabbitmq-server, but {where} did not answer within {START_TIMEOUT_S}s: see /var/log/rabbitmq/")
    return 1


if __name__ == "__main__":
    sys.exit(main())
