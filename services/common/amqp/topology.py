"""The system's queues: their names, their dead-letter queues, and how they are declared.

Every queue is durable and dead-letters to ``<queue>.dlq`` (itself durable); every message
is published persistent. Queue names carry ``QUEUE_PREFIX`` (``Settings.queue``).
"""

from dataclasses import dataclass

from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue

from services.common.delay import LabelDelay, bucket_start_s
from services.common.settings import Settings

FEATURES, Y_TRUE, Y_PRED = "features", "y_true", "y_pred"
QUEUES = (FEATURES, Y_TRUE, Y_PRED)
PERSISTENT = 2  # AMQP delivery mode: written to disk by the broker


def dlq_name(queue: str) -> str:
    return f"{queue}.dlq"


def half_queue(settings: Settings, kind: str, sample_id: str) -> str:
    """The queue a label (``Y_TRUE``) or a prediction (``Y_PRED``) of ``sample_id`` goes to.

    Every publisher of a half asks here, so that both halves of an id always meet in the
    same queue pair: the one place to route by id when the join is split into shards.
    """
    del sample_id  # one join today: every id goes to the one queue of its kind
    return settings.queue(kind)


def half_queues(settings: Settings, kind: str) -> list[str]:
    """Every queue ``half_queue`` may name for ``kind`` (what a publisher declares)."""
    return [settings.queue(kind)]


@dataclass(frozen=True)
class DelayQueue:
    """A queue nobody consumes: its messages wait out their ``expiration``, then the broker
    dead-letters them into ``target`` (the delayed labels of LABEL_DELAY_S, services/common/delay.py)."""

    name: str
    target: str


def delay_queue(target: str, bucket: int) -> DelayQueue:
    """The delay queue of one bucket of delays in front of ``target``; named by the bucket's
    shortest delay: ``y_true.delay.8000ms`` holds labels delayed 8 to 9.5 s."""
    return DelayQueue(f"{target}.delay.{round(bucket_start_s(bucket) * 1000)}ms", target)


def delay_queues(settings: Settings, kind: str, delay: LabelDelay) -> list[DelayQueue]:
    """Every delay queue a label delayed by ``delay`` may wait in (what its publisher declares)."""
    return [delay_queue(target, bucket) for target in half_queues(settings, kind) for bucket in delay.buckets()]


async def declare(channel: AbstractRobustChannel, queue: "str | DelayQueue") -> None:
    """Declare a queue a service publishes to: a consumed queue with its DLQ, or a delay queue."""
    if isinstance(queue, DelayQueue):
        await declare_delay_queue(channel, queue)
    else:
        await declare_queue(channel, queue)


async def declare_delay_queue(channel: AbstractRobustChannel, queue: DelayQueue) -> AbstractRobustQueue:
    """Durable; an expired message goes to ``queue.target`` (RabbitMQ drops a message's
    ``expiration`` when it dead-letters it, so it does not expire again there)."""
    return await channel.declare_queue(
        queue.name,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue.target},
    )


async def declare_queue(channel: AbstractRobustChannel, name: str) -> AbstractRobustQueue:
    """Declare a durable queue and its durable dead-letter queue."""
    await channel.declare_queue(dlq_name(name), durable=True)
    return await channel.declare_queue(
        name,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq_name(name)},
    )
