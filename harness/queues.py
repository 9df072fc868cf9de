"""A run's queues on the broker: a prefix no other run uses, their state, deleting them afterwards."""

import asyncio
import uuid

import aio_pika

from services.common.amqp.topology import FEATURES, Y_PRED, Y_TRUE, dlq_name


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}."


def queue_names() -> list[str]:
    """A pipeline's queues and their dead-letter queues, without the prefix."""
    return [name for base in (FEATURES, Y_TRUE, Y_PRED) for name in (base, dlq_name(base))]


async def connect(amqp_url: str) -> aio_pika.abc.AbstractConnection:
    """A plain connection to the first broker of ``amqp_url`` (one, or a cluster's nodes comma-separated) that answers."""
    problems = []
    for url in amqp_url.split(","):
        try:
            return await aio_pika.connect(url.strip(), timeout=10)
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            problems.append(f"{url}: {exc}")
    raise ConnectionError("no broker answers: " + "; ".join(problems))


def delete_queues(amqp_url: str, prefix: str) -> None:
    """Remove a run's queues (and their dead-letter queues) from the broker."""

    async def delete() -> None:
        connection = await connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            for name in queue_names():
                await channel.queue_delete(f"{prefix}{name}")

    asyncio.run(delete())


def queue_state(amqp_url: str, prefix: str) -> dict[str, tuple[int, int]]:
    """(messages ready, consumers) of each of a pipeline's queues and dead-letter queues."""

    async def read() -> dict[str, tuple[int, int]]:
        connection = await connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            state = {}
            for name in queue_names():
                queue = await channel.declare_queue(f"{prefix}{name}", passive=True)
                result = queue.declaration_result
                state[name] = (result.message_count or 0, result.consumer_count or 0)
            return state

    return asyncio.run(read())
