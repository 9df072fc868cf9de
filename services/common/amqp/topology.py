"""The system's queues: their names, their dead-letter queues, and how they are declared.

Every queue is durable and dead-letters to ``<queue>.dlq`` (itself durable); every message
is published persistent. Queue names carry ``QUEUE_PREFIX`` (``Settings.queue``).
"""

from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue

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


async def declare_queue(channel: AbstractRobustChannel, name: str) -> AbstractRobustQueue:
    """Declare a durable queue and its durable dead-letter queue."""
    await channel.declare_queue(dlq_name(name), durable=True)
    return await channel.declare_queue(
        name,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq_name(name)},
    )
