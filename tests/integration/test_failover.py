"""AMQP_URL listing several brokers: a service connects to the first that answers, moves to the
next when its broker goes, and /health says which it is on. Here the "brokers" are two TCP
proxies to the one real RabbitMQ (and a port where nothing listens); on a real three-node
cluster, with nodes killed, in tests/cluster."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic_core import Url

from harness.processes import PORT_SETTING, ServiceProcess, free_port, service_env, stop_all
from harness.proxy import TcpProxy
from harness.queues import connect
from services.common.amqp.link import BrokerLink
from services.common.amqp.publisher import Outgoing
from services.common.amqp.topology import FEATURES
from services.common.settings import Settings

pytestmark = [pytest.mark.broker]


@pytest.fixture
def proxies(amqp_url: str) -> Iterator[tuple[TcpProxy, TcpProxy]]:
    port = Url(amqp_url).port or 5672
    first, second = TcpProxy(port).start(), TcpProxy(port).start()
    try:
        yield first, second
    finally:
        for proxy in (first, second):
            proxy.close()


def brokers(amqp_url: str, *ports: int) -> str:
    url = Url(amqp_url)
    return ",".join(f"amqp://{url.username}:{url.password}@127.0.0.1:{port}/" for port in ports)


def test_a_link_skips_a_dead_broker_and_fails_over_when_its_broker_goes(
    amqp_url: str, queue_prefix: str, proxies: tuple[TcpProxy, TcpProxy]
) -> None:
    first, second = proxies
    nothing = free_port()  # nothing listens there
    settings = Settings(AMQP_URL=brokers(amqp_url, nothing, first.port, second.port), QUEUE_PREFIX=queue_prefix)
    queue = settings.queue(FEATURES)

    async def scenario() -> tuple[dict[str, str], dict[str, str]]:
        link = BrokerLink(settings, "failover-test", publishes=[queue])
        link.start()
        await asyncio.wait_for(link.ready(), 30)
        try:
            before = link.details()
            await link.publisher.publish_many([Outgoing(queue, b"{}", "1")])
            first.close()  # this broker goes: its connections drop, it takes no new ones
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while link.details() == before or link.problem() is not None:
                assert loop.time() < deadline, f"no failover: {link.details()}, {link.problem()}"
                await asyncio.sleep(0.1)
            await asyncio.wait_for(link.publisher.publish_many([Outgoing(queue, b"{}", "2")]), 30)
            return before, link.details()
        finally:
            await link.close()

    before, after = asyncio.run(scenario())
    assert before == {"broker": f"127.0.0.1:{first.port}"}
    assert after == {"broker": f"127.0.0.1:{second.port}"}
    assert asyncio.run(messages_in(amqp_url, queue)) == 2  # both confirmed publishes are there


async def messages_in(amqp_url: str, queue: str) -> int:
    connection = await connect(amqp_url)
    async with connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


def test_health_names_the_broker_a_service_is_on(
    amqp_url: str, queue_prefix: str, proxies: tuple[TcpProxy, TcpProxy], tmp_path: Path
) -> None:
    _first, second = proxies
    env = service_env(
        AMQP_URL=brokers(amqp_url, free_port(), second.port),
        QUEUE_PREFIX=queue_prefix,
        FEATURES_INTERVAL_S="3600",
        **{setting: str(free_port()) for setting in PORT_SETTING.values()},
    )
    service = ServiceProcess("features_api", env, tmp_path).start()
    try:
        service.wait_healthy()
        health = httpx.get(f"{service.url}/health").json()
        assert health == {"status": "ok", "service": "features_api", "broker": f"127.0.0.1:{second.port}"}
    finally:
        stop_all([service])
