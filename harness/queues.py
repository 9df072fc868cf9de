"""A run's queues on the broker: a prefix no other run uses, their state, deleting them afterwards."""

import asyncio
import json
import uuid
from typing import Any

import aio_pika

from services.common.amqp.topology import FEATURES, PREDICTIONS, Y_PRED, Y_TRUE, delay_queues, dlq_name, half_queues
from services.common.delay import LabelDelay
from services.common.settings import Settings


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}."


def queue_names(shards: int = 1) -> list[str]:
    """A pipeline's queues and their dead-letter queues, without the prefix (with ``shards`` > 1,
    each shard's label and prediction queues, and the fences under the unsharded names)."""
    settings = Settings(QUEUE_PREFIX="", METRIC_SHARDS=shards)
    halves = [queue for kind in (Y_TRUE, Y_PRED) for queue in half_queues(settings, kind)]
    fences = [Y_TRUE, Y_PRED] if shards > 1 else []
    return [*fences, *(name for base in (FEATURES, PREDICTIONS, *halves) for name in (base, dlq_name(base)))]


async def connect(amqp_url: str) -> aio_pika.abc.AbstractConnection:
    """A plain connection to the first broker of ``amqp_url`` (one, or a cluster's nodes comma-separated) that answers."""
    problems = []
    for url in amqp_url.split(","):
        try:
            return await aio_pika.connect(url.strip(), timeout=10)
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            problems.append(f"{url}: {exc}")
    raise ConnectionError("no broker answers: " + "; ".join(problems))


def delay_queue_names(label_delay: str, shards: int = 1) -> list[str]:
    """The delay queues features_api declares under LABEL_DELAY_S=``label_delay``, without the prefix."""
    settings = Settings(QUEUE_PREFIX="", METRIC_SHARDS=shards)
    return [queue.name for queue in delay_queues(settings, Y_TRUE, LabelDelay.parse(label_delay))]


def delete_queues(amqp_url: str, prefix: str, label_delay: str = "0", shards: int = 1) -> None:
    """Remove a run's queues (and their dead-letter queues, and its delay queues) from the broker."""

    async def delete() -> None:
        connection = await connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            for name in [*queue_names(shards), *delay_queue_names(label_delay, shards)]:
                await channel.queue_delete(f"{prefix}{name}")

    asyncio.run(delete())


def queue_state(amqp_url: str, prefix: str, shards: int = 1) -> dict[str, tuple[int, int]]:
    """(messages ready, consumers) of each of a pipeline's queues and dead-letter queues."""

    async def read() -> dict[str, tuple[int, int]]:
        connection = await connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            state = {}
            for name in queue_names(shards):
                queue = await channel.declare_queue(f"{prefix}{name}", passive=True)
                result = queue.declaration_result
                state[name] = (result.message_count or 0, result.consumer_count or 0)
            return state

    return asyncio.run(read())


def ready_messages(amqp_url: str, names: list[str]) -> dict[str, int]:
    """Messages ready in each named queue (full broker names), e.g. labels waiting in a delay queue."""

    async def read() -> dict[str, int]:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            counts = {}
            for name in names:
                queue = await channel.declare_queue(name, passive=True)
                counts[name] = queue.declaration_result.message_count or 0
            return counts

    return asyncio.run(read())


def publish_json(amqp_url: str, queue: str, messages: list[dict[str, Any]]) -> None:
    """Publish each message as JSON, persistent, straight to ``queue`` (as a producer of ours would)."""

    async def send() -> None:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for message in messages:
                await channel.default_exchange.publish(
                    aio_pika.Message(json.dumps(message).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=queue,
                )

    asyncio.run(send())


def dead_letters(amqp_url: str, queue: str, count: int, timeout: float = 30) -> dict[str, str]:
    """The first ``count`` messages of ``queue``'s DLQ, taken off it: each id's x-dlq-reason."""

    async def take() -> dict[str, str]:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            dlq = await channel.declare_queue(f"{queue}.dlq", passive=True)
            reasons: dict[str, str] = {}
            async with asyncio.timeout(timeout):
                async with dlq.iterator() as messages:
                    async for message in messages:
                        await message.ack()
                        reasons[json.loads(message.body)["id"]] = str(message.headers["x-dlq-reason"])
                        if len(reasons) == count:
                            break
            return reasons

    return asyncio.run(take())
