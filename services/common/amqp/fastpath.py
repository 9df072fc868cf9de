"""The one module that uses aiormq internals, and the public path beside it.

Why it exists: aiormq's ``basic_publish`` sends one message per call, each taking the
channel lock and a turn of the event loop, and its writer queue holds 10 frames: a batch of
publishes leaves one message per loop turn. ``send_batch`` does what ``basic_publish`` does
(delivery tags, confirmation futures, the mandatory-return bookkeeping, rollback when
nothing was queued) for a whole batch under one lock as one queued frame. Measured: with the
coalescing transport, a 5,000-sample burst went from ~10,000 socket writes per service to
~20, and the pipeline from ~3.6 to ~1.4 ms of CPU per sample (docs/performance.md).

What it relies on (aiormq 7.2): ``Channel.lock``, ``.delivery_tag``, ``.confirmations``,
``.message_id_delivery_tag``, ``.write_queue``, ``.max_content_size``, ``.number``,
``.create_future()``, and ``Connection.FRAME_BUFFER_SIZE``. None of them is declared by
aiormq's ``AbstractChannel``. So: the version is checked at import (``FAST_PATH``), the
attributes on first use, and anything else takes ``publish_public``: gathered
``basic_publish`` calls, aiormq's public API, correct on any version, just slower.
"""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib.metadata import version
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.common import FieldTable
from pamqp.header import ContentHeader

from services.common.amqp.topology import PERSISTENT

log = logging.getLogger(__name__)

WRITTEN_FOR = "7.2"  # aiormq major.minor whose internals send_batch was written against and tested with
AIORMQ_VERSION = version("aiormq")
FAST_PATH = AIORMQ_VERSION.split(".")[:2] == WRITTEN_FOR.split(".")
CHANNEL_INTERNALS = (
    "lock", "delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue", "max_content_size", "number",
)  # fmt: skip
# aiormq's writer queue holds 10 frames by default; past that each frame waits a loop turn (and
# a publish holds the channel lock meanwhile). Single acks, nacks and dead-letter publishes are a
# frame each: with room for a batch of them, they leave in one write. A frame is a few hundred
# bytes: ~1 MB at most.
FRAME_BUFFER_SIZE = 4096

if not FAST_PATH:
    log.warning(
        "aiormq %s is installed; the batched publish was written for %s.x: publishing through aiormq's public "
        "basic_publish instead (correct, slower)",
        AIORMQ_VERSION,
        WRITTEN_FOR,
    )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: where, what, and the sample id it carries; ``expiration_ms``: the
    broker drops (or dead-letters) it after that long in its queue (a delayed label)."""

    queue: str
    body: bytes
    message_id: str
    headers: dict[str, str] | None = None
    expiration_ms: int | None = None

    def properties(self) -> Basic.Properties:
        headers: FieldTable | None = None if self.headers is None else dict(self.headers)  # a field table may hold more than str
        return Basic.Properties(
            delivery_mode=PERSISTENT,
            content_type="application/json",
            message_id=self.message_id,
            headers=headers,
            expiration=None if self.expiration_ms is None else str(self.expiration_ms),
        )


def enlarge_frame_buffer() -> None:
    """Give aiormq's writer queue room for a batch of single frames (see FRAME_BUFFER_SIZE).

    A class attribute: it applies to every connection this process makes from now on, which
    are all BrokerLink's. Called explicitly by BrokerLink, never by importing a module.
    """
    if FAST_PATH:
        aiormq.Connection.FRAME_BUFFER_SIZE = max(aiormq.Connection.FRAME_BUFFER_SIZE, FRAME_BUFFER_SIZE)


def has_internals(channel: object) -> bool:
    return all(hasattr(channel, name) for name in CHANNEL_INTERNALS)


async def publish(channel: aiormq.abc.AbstractChannel, messages: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
    """Queue every message on ``channel`` (publisher confirms on); one confirmation future each.

    The fast path when this aiormq is the one it was written for, else the public one.
    """
    if FAST_PATH and has_internals(channel):
        return await send_batch(channel, messages)
    return publish_public(channel, messages)


def publish_public(channel: aiormq.abc.AbstractChannel, messages: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
    """aiormq's public ``basic_publish`` per message, all started at once; each task ends with
    its confirm (the ``Basic.Ack`` frame) or the reason there is none."""
    return [
        asyncio.ensure_future(
            channel.basic_publish(
                message.body, exchange="", routing_key=message.queue, properties=message.properties(), mandatory=True
            )
        )
        for message in messages
    ]


async def send_batch(channel: Any, messages: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
    """Queue every message as one write on the channel; return each one's confirmation future.

    aiormq gives each publish a future from the channel's future store (so that closing the
    channel fails it), which costs two sets and three callbacks per message (measured ~15 % of
    features_api's CPU). Here only the batch has such a future: when the channel closes, that
    one fails and cancels the confirmations still pending (the publisher then sends them again).
    """
    assert channel.publisher_confirms, "a ConfirmedPublisher needs a channel with publisher confirms"
    loop = asyncio.get_running_loop()
    frames: list[Any] = []
    confirmations: list[asyncio.Future[Any]] = []
    batch = _Batch(channel, len(messages))
    async with channel.lock:
        first_tag = channel.delivery_tag + 1
        try:
            for message in messages:
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirmation = loop.create_future()
                confirmation.add_done_callback(batch.one_done)
                channel.confirmations[tag] = confirmation
                # A Basic.Return names the message by its message_id: this maps it to the tag.
                channel.message_id_delivery_tag[message.message_id] = tag
                batch.sent.append((message.message_id, tag))
                confirmations.append(confirmation)
                frames.append(_publish_method(message.queue))
                frames.append(ContentHeader(properties=message.properties(), body_size=len(message.body)))
                step = channel.max_content_size
                frames.extend(ContentBody(message.body[at : at + step]) for at in range(0, len(message.body), step))
            batch.watch(channel.create_future(), confirmations)
            await channel.write_queue.put(ChannelFrame.marshall(frames=frames, channel_number=channel.number))
        except BaseException:
            # Nothing reached the broker: give the delivery tags back, as aiormq does.
            for tag in range(first_tag, channel.delivery_tag + 1):
                channel.confirmations.pop(tag, None)
            channel.delivery_tag = first_tag - 1
            batch.abandon(confirmations)
            raise
    return confirmations


@lru_cache(maxsize=1024)
def _publish_method(queue: str) -> Basic.Publish:
    """The Basic.Publish frame of every message to ``queue`` (immutable once made; validating one costs)."""
    return Basic.Publish(exchange="", routing_key=queue, mandatory=True)


class _Batch:
    """The publishes of one ``send_batch``: one future in the channel's store stands for them all."""

    __slots__ = ("channel", "left", "sent", "stands_for")

    def __init__(self, channel: Any, count: int) -> None:
        self.channel = channel
        self.left = count
        self.sent: list[tuple[str, int]] = []  # (message_id, delivery tag)
        self.stands_for: asyncio.Future[Any] | None = None

    def watch(self, stands_for: asyncio.Future[Any], confirmations: list[asyncio.Future[Any]]) -> None:
        self.stands_for = stands_for
        stands_for.add_done_callback(partial(self._over, confirmations))
        if self.left == 0:
            stands_for.set_result(None)

    def one_done(self, _confirmation: object) -> None:
        self.left -= 1
        if self.left == 0 and self.stands_for is not None and not self.stands_for.done():
            self.stands_for.set_result(None)

    def abandon(self, confirmations: list[asyncio.Future[Any]]) -> None:
        """Nothing was queued: cancel it all (the batch's future leaves the channel's store)."""
        if self.stands_for is not None:
            self.stands_for.cancel()  # runs _over
        else:
            self._over(confirmations)

    def _over(self, confirmations: list[asyncio.Future[Any]], _stands_for: object = None) -> None:
        """Every confirmation came, or the channel closed (the store failed ``stands_for``): cancel
        what is still pending, and forget the message ids, as aiormq does per publish."""
        for confirmation in confirmations:
            confirmation.cancel()  # a no-op on those done
        forget = self.channel.message_id_delivery_tag
        for message_id, tag in self.sent:
            if forget.get(message_id) == tag:
                del forget[message_id]
