"""The system's queues: their names, their dead-letter queues, and how they are declared.

Every queue is durable and dead-letters to ``<queue>.dlq`` (itself durable); every message
is published persistent. Queue names carry ``QUEUE_PREFIX`` (``Settings.queue``).

``QUEUE_TYPE=quorum`` makes every queue and DLQ a quorum queue, replicated over the nodes of
a cluster (docs/cluster.md). RabbitMQ takes the type only at declaration (a policy cannot set
it, and a classic queue of the same name refuses it). A quorum queue's own dead-lettering is
at-most-once unless ``x-dead-letter-strategy`` is ``at-least-once``, which needs ``x-overflow``
``reject-publish``; its ``x-delivery-limit`` also counts deliveries cut by a closed connection,
so it is kept well above what a few broker failovers make. The consumers' own failure rule
(services/common/amqp/consumer.py) dead-letters long before the limit.
"""

from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue

from services.common.delay import LabelDelay, bucket_start_s
from services.common.settings import QueueType, Settings

FEATURES, Y_TRUE, Y_PRED = "features", "y_true", "y_pred"
QUEUES = (FEATURES, Y_TRUE, Y_PRED)
PERSISTENT = 2  # AMQP delivery mode: written to disk by the broker
# Deliveries of one message a quorum queue allows before it dead-letters the message: each
# connection lost while the message was unacked counts, so a few failovers must not reach it.
DELIVERY_LIMIT = 20


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


def queue_arguments(name: str, queue_type: QueueType = "classic") -> dict[str, Any]:
    """The declaration arguments of queue ``name`` (a DLQ's name ends in ``.dlq``)."""
    arguments: dict[str, Any] = {}
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    if name.endswith(".dlq"):
        return arguments  # the end of the line: a DLQ dead-letters nowhere
    arguments |= dead_lettering(dlq_name(name), queue_type)
    if queue_type == "quorum":
        arguments["x-delivery-limit"] = DELIVERY_LIMIT
    return arguments


def dead_lettering(to: str, queue_type: QueueType) -> dict[str, Any]:
    """The arguments that dead-letter a queue's messages into queue ``to``: at least once on a quorum queue."""
    arguments: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": to}
    if queue_type == "quorum":
        arguments |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    return arguments


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


def delay_queue_arguments(queue: DelayQueue, queue_type: QueueType = "classic") -> dict[str, Any]:
    """A delay queue's arguments: of ``queue_type``, dead-lettering (at least once on a quorum queue) into its target."""
    return ({"x-queue-type": "quorum"} if queue_type == "quorum" else {}) | dead_lettering(queue.target, queue_type)


async def declare(channel: AbstractRobustChannel, queue: "str | DelayQueue", queue_type: QueueType = "classic") -> None:
    """Declare a queue a service publishes to: a consumed queue with its DLQ, or a delay queue."""
    if isinstance(queue, DelayQueue):
        await declare_delay_queue(channel, queue, queue_type)
    else:
        await declare_queue(channel, queue, queue_type)


async def declare_delay_queue(
    channel: AbstractRobustChannel, queue: DelayQueue, queue_type: QueueType = "classic"
) -> AbstractRobustQueue:
    """Durable; an expired message goes to ``queue.target`` (RabbitMQ drops a message's
    ``expiration`` when it dead-letters it, so it does not expire again there)."""
    return await channel.declare_queue(queue.name, durable=True, arguments=delay_queue_arguments(queue, queue_type))


async def declare_queue(channel: AbstractRobustChannel, name: str, queue_type: QueueType = "classic") -> AbstractRobustQueue:
    """Declare a durable queue and its durable dead-letter queue, both of ``queue_type``."""
    await channel.declare_queue(dlq_name(name), durable=True, arguments=queue_arguments(dlq_name(name), queue_type))
    return await channel.declare_queue(name, durable=True, arguments=queue_arguments(name, queue_type))
