"""Queue declaration on the real broker: a new classic queue is made version 2 (the cheaper
one for the broker), while a queue that exists already keeps its version and its messages —
RabbitMQ refuses a redeclaration with another ``x-queue-version`` either way."""

import asyncio
from typing import Any

import aio_pika
import aiormq
import pytest

from services.common.amqp.topology import PERSISTENT, declare_queue, dlq_name, queue_arguments
from services.common.amqp.transport import CoalescingRobustConnection

pytestmark = [pytest.mark.broker]

VERSION_2 = {"x-queue-version": 2}


async def taken(connection: aio_pika.abc.AbstractConnection, queue: str, arguments: dict[str, Any]) -> bool:
    """Whether the broker takes a declaration of ``queue`` with exactly ``arguments`` (on a channel of its own)."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed:
        return False
    await channel.close()
    return True


def test_a_new_queue_and_its_dlq_are_made_classic_version_2(amqp_url: str, queue_prefix: str) -> None:
    queue = f"{queue_prefix}y_true"

    async def scenario() -> dict[str, tuple[bool, bool]]:
        connection = await aio_pika.connect_robust(amqp_url, connection_class=CoalescingRobustConnection)
        async with connection:
            await declare_queue(await connection.channel(), queue)
            return {
                name: (
                    await taken(connection, name, queue_arguments(name) | VERSION_2),
                    await taken(connection, name, queue_arguments(name)),
                )
                for name in (queue, dlq_name(queue))
            }

    answers = asyncio.run(scenario())
    assert answers == {queue: (True, False), dlq_name(queue): (True, False)}, answers


def test_a_queue_made_before_keeps_its_version_and_its_messages(amqp_url: str, queue_prefix: str) -> None:
    """Queues of an earlier version of the services (no x-queue-version) are used as they are."""
    queue = f"{queue_prefix}features"

    async def scenario() -> tuple[bool, bytes | None, int]:
        connection = await aio_pika.connect_robust(amqp_url, connection_class=CoalescingRobustConnection)
        async with connection:
            old = await connection.channel()
            for name in (dlq_name(queue), queue):
                await old.declare_queue(name, durable=True, arguments=queue_arguments(name))
            await old.default_exchange.publish(
                aio_pika.Message(b'{"waiting": true}', delivery_mode=aio_pika.DeliveryMode(PERSISTENT)), routing_key=queue
            )
            channel = await connection.channel()
            declared = await declare_queue(channel, queue)
            kept_version = await taken(connection, queue, queue_arguments(queue))
            message = await declared.get(timeout=5, fail=False)
            if message is not None:
                await message.ack()
            # The declaring channel is still good for work.
            await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue)
            await asyncio.sleep(0.2)
            count = (await channel.declare_queue(queue, passive=True)).declaration_result.message_count or 0
            return kept_version, None if message is None else message.body, count

    kept_version, body, count = asyncio.run(scenario())
    assert kept_version, "the existing queue was redeclared as another version"
    assert body == b'{"waiting": true}'
    assert count == 1


def test_a_queue_with_other_arguments_is_still_refused_with_the_brokers_reason(amqp_url: str, queue_prefix: str) -> None:
    queue = f"{queue_prefix}y_pred"

    async def scenario() -> None:
        connection = await aio_pika.connect_robust(amqp_url, connection_class=CoalescingRobustConnection)
        async with connection:
            other = await connection.channel()
            await other.declare_queue(queue, durable=True, arguments={"x-max-length": 5})
            await declare_queue(await connection.channel(), queue)

    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="inequivalent arg"):
        asyncio.run(scenario())
