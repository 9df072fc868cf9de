"""The system's queues: their names, their dead-letter queues, and how they are declared.

Every queue is durable and dead-letters to ``<queue>.dlq`` (itself durable); every message
is published persistent. Queue names carry ``QUEUE_PREFIX`` (``Settings.queue``).
"""

from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue

FEATURES, Y_TRUE, Y_PRED = "features", "y_true", "y_pred"
QUEUES = (FEATURES, Y_TRUE, Y_PRED)
PERSISTENT = 2  # AMQP delivery mode: written to disk by the broker


def dlq_name(queue: str) -> str:
    return f"{queue}.dlq"


async def declare_queue(channel: AbstractRobustChannel, name: str) -> AbstractRobustQueue:
    """Declare a durable queue and its durable dead-letter queue."""
    await channel.declare_queue(dlq_name(name), durable=True)
    return await channel.declare_queue(
        name,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq_name(name)},
    )
