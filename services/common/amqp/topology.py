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

``METRIC_SHARDS=N`` (N > 1) splits the join by id (docs/cluster.md, "The sharded join"): the
halves of an id go to the shard ``crc32(id) % N`` (``shard_of``), into ``y_true.shard<k>of<N>``
and ``y_pred.shard<k>of<N>``, declared with ``x-single-active-consumer`` so that only one
metric_api of a shard joins at a time. N is in the name, and the unsharded name is fenced off
(``fence_arguments``), so services that disagree on N fail loudly instead of mis-routing.
With N = 1 the names and arguments are the unsharded ones, as before shards existed.

A classic queue the services create is a classic queue of version 2 (``x-queue-version: 2``,
RabbitMQ >= 3.10; measured ~0.08 ms less of the broker's CPU per sample, docs/performance.md).
RabbitMQ refuses to redeclare a queue with another ``x-queue-version`` than it was made with
(PRECONDITION_FAILED, either way), so a queue that exists already keeps its version: the
version is tried first on a channel of its own (``_takes_version``), and the queue is declared
with it only where that worked. An operator moves existing queues with a policy
(``queue-version``), which is not part of the arguments compared.
"""

import contextlib
import logging
import re
import zlib
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractRobustChannel, AbstractRobustQueue
from aiormq.exceptions import ChannelPreconditionFailed

from services.common.delay import LabelDelay, bucket_start_s
from services.common.settings import QueueType, Settings

FEATURES, Y_TRUE, Y_PRED = "features", "y_true", "y_pred"
# Predictions made elsewhere, with their features: model_api checks them against the schema, feeds
# drift with them and publishes them to y_pred (the AMQP twin of POST /predictions).
PREDICTIONS = "predictions"
QUEUES = (FEATURES, Y_TRUE, Y_PRED, PREDICTIONS)
PERSISTENT = 2  # AMQP delivery mode: written to disk by the broker
# Deliveries of one message a quorum queue allows before it dead-letters the message: each
# connection lost while the message was unacked counts, so a few failovers must not reach it.
DELIVERY_LIMIT = 20
CLASSIC_VERSION = {"x-queue-version": 2}  # for a classic queue the services create

log = logging.getLogger(__name__)


def dlq_name(queue: str) -> str:
    return f"{queue}.dlq"


def shard_of(sample_id: str, shards: int) -> int:
    """The shard of the join that owns ``sample_id``: a function of the id alone (crc32, as
    zlib computes it on the id's UTF-8 bytes), so it never changes with a broker's restart."""
    return zlib.crc32(sample_id.encode()) % shards


def shard_queue(settings: Settings, kind: str, shard: int) -> str:
    """Shard ``shard``'s queue of ``kind`` (Y_TRUE or Y_PRED); the unsharded name when METRIC_SHARDS is 1."""
    if settings.METRIC_SHARDS == 1:
        return settings.queue(kind)
    if not 0 <= shard < settings.METRIC_SHARDS:
        shards = settings.METRIC_SHARDS
        raise ValueError(f"shard {shard} is not one of METRIC_SHARDS={shards} (0 to {shards - 1})")
    return settings.queue(f"{kind}.shard{shard}of{settings.METRIC_SHARDS}")


_SHARD_NAME = re.compile(r"^(?P<base>.+)\.shard(?P<shard>\d+)of(?P<shards>\d+)$")


def sharded(name: str) -> tuple[str, int] | None:
    """(the unsharded name, METRIC_SHARDS) of a shard queue's name; None for any other queue."""
    match = _SHARD_NAME.match(name)
    return None if match is None else (match["base"], int(match["shards"]))


def half_queue(settings: Settings, kind: str, sample_id: str) -> str:
    """The queue a label (``Y_TRUE``) or a prediction (``Y_PRED``) of ``sample_id`` goes to.

    Every publisher of a half asks here, so that both halves of an id always meet in the
    same queue pair: that of the shard owning the id (``shard_of``).
    """
    if settings.METRIC_SHARDS == 1:
        return settings.queue(kind)
    return shard_queue(settings, kind, shard_of(sample_id, settings.METRIC_SHARDS))


def half_queues(settings: Settings, kind: str) -> list[str]:
    """Every queue ``half_queue`` may name for ``kind`` (what a publisher declares)."""
    return [shard_queue(settings, kind, shard) for shard in range(settings.METRIC_SHARDS)]


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
    if sharded(name) is not None:
        # Two metric_api's of one shard: the broker delivers to one, the other waits (standby).
        arguments["x-single-active-consumer"] = True
    return arguments


def fence_arguments(shards: int, queue_type: QueueType = "classic") -> dict[str, Any]:
    """The arguments of the unsharded queue (``y_true``) once the join is split into ``shards``.

    Every service with METRIC_SHARDS > 1 declares it so, before its shard queues: it holds
    nothing (a publish to it is refused), and its arguments differ from the unsharded queue's
    and from another METRIC_SHARDS' fence, so a service that disagrees on METRIC_SHARDS (or
    queues left from before the split) fails its declaration with PRECONDITION_FAILED instead
    of sending halves where no join takes them.
    """
    return ({"x-queue-type": "quorum"} if queue_type == "quorum" else {}) | {
        "x-max-length": 0,
        "x-overflow": "reject-publish",
        "x-max-length-bytes": shards,  # compared at each declaration: METRIC_SHARDS in the broker's words
    }


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
    return await _declare(channel, queue.name, delay_queue_arguments(queue, queue_type), queue_type)


async def declare_queue(channel: AbstractRobustChannel, name: str, queue_type: QueueType = "classic") -> AbstractRobustQueue:
    """Declare a durable queue and its durable dead-letter queue, both of ``queue_type`` (a shard's
    queue after the fence of its unsharded name, see ``fence_arguments``)."""
    if (shard := sharded(name)) is not None:
        unsharded, shards = shard
        await channel.declare_queue(unsharded, durable=True, arguments=fence_arguments(shards, queue_type))
    await _declare(channel, dlq_name(name), queue_arguments(dlq_name(name), queue_type), queue_type)
    return await _declare(channel, name, queue_arguments(name, queue_type), queue_type)


async def _declare(
    channel: AbstractRobustChannel, name: str, arguments: dict[str, Any], queue_type: QueueType
) -> AbstractRobustQueue:
    """Declare a durable queue: a classic one as version 2 unless it exists already as another."""
    if queue_type == "classic" and await _takes_version(channel, name, arguments | CLASSIC_VERSION):
        arguments = arguments | CLASSIC_VERSION
    # The robust channel keeps these arguments and declares the queue with them again after a reconnect.
    return await channel.declare_queue(name, durable=True, arguments=arguments)


async def _takes_version(channel: AbstractRobustChannel, name: str, arguments: dict[str, Any]) -> bool:
    """Whether the broker takes queue ``name`` declared with ``arguments`` (which name a classic
    queue version): True once it made the queue so or has it so already; False when the queue
    exists with another version.

    Tried on a channel of its own: a refused declaration closes its channel, and the robust
    channel would remember a declaration that failed. A refusal for another reason (arguments
    that differ otherwise) answers True: the declaration proper then fails with the broker's reason.
    """
    connection = (await channel.get_underlay_channel()).connection
    probe = await connection.channel(publisher_confirms=False)
    try:
        await probe.queue_declare(name, durable=True, arguments=arguments)
    except ChannelPreconditionFailed as exc:
        if "x-queue-version" not in str(exc):
            return True
        log.info("queue %s exists as another classic queue version than 2: declared as it is (%s)", name, exc)
        return False
    finally:
        if not probe.is_closed:
            with contextlib.suppress(Exception):  # the queue is declared; a channel that will not close is the broker's to drop
                await probe.close()
    return True
