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

from typing import Any

from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue

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
    arguments |= {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq_name(name)}
    if queue_type == "quorum":
        arguments |= {
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": DELIVERY_LIMIT,
        }
    return arguments


async def declare_queue(channel: AbstractRobustChannel, name: str, queue_type: QueueType = "classic") -> AbstractRobustQueue:
    """Declare a durable queue and its durable dead-letter queue, both of ``queue_type``."""
    await channel.declare_queue(dlq_name(name), durable=True, arguments=queue_arguments(dlq_name(name), queue_type))
    return await channel.declare_queue(name, durable=True, arguments=queue_arguments(name, queue_type))
