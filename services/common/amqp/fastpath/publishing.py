"""A batch of publishes in one write, and aiormq's public ``basic_publish`` beside it.

aiormq's ``basic_publish`` sends one message per call, each taking the channel lock and a turn
of the event loop, and its writer queue holds 10 frames: a batch of publishes leaves one message
per loop turn. ``send_batch`` does what ``basic_publish`` does (delivery tags, confirmation
futures, the mandatory-return bookkeeping, rollback when nothing was queued) for a whole batch
under one lock as one queued frame, encoding the frames itself. Measured: with the coalescing
transport, a 5,000-sample burst went from ~10,000 socket writes per service to ~20, and the
pipeline from ~3.6 to ~1.4 ms of CPU per sample (docs/performance.md).

What it relies on is ``gate.BATCHED_PUBLISH``; the channel attributes it touches are checked on
each channel too (``CHANNEL_INTERNALS``). Otherwise: gathered ``basic_publish`` calls.
"""

import asyncio
import struct
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic
from pamqp.frame import marshal
from pamqp.header import ContentHeader

from services.common.amqp.fastpath import gate
from services.common.amqp.outgoing import Outgoing
from services.common.amqp.topology import PERSISTENT

CHANNEL_INTERNALS = (
    "lock", "delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue", "max_content_size", "number",
)  # fmt: skip


def has_internals(channel: object) -> bool:
    return all(hasattr(channel, name) for name in CHANNEL_INTERNALS)


async def publish(channel: aiormq.abc.AbstractChannel, messages: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
    """Queue every message on ``channel`` (publisher confirms on); one confirmation future each.

    In one write where this aiormq allows (``gate.BATCHED_PUBLISH``), else through the public path.
    """
    if gate.usable(gate.BATCHED_PUBLISH) and has_internals(channel):
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
    parts: list[bytes] = []
    confirmations: list[asyncio.Future[Any]] = []
    batch = _Batch(channel, len(messages))
    number, step = channel.number, channel.max_content_size
    async with channel.lock:
        first_tag = channel.delivery_tag + 1
        try:
            for message in messages:
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirmation = loop.create_future()
                confirmation.add_done_callback(batch.one_done)
                channel.confirmations[tag] = confirmation
                # A Basic.Return names the message by its message_id (its own: outgoing.py): this maps it to the tag.
                channel.message_id_delivery_tag[message.message_id] = tag
                batch.sent.append((message.message_id, tag))
                confirmations.append(confirmation)
                parts.append(_publish_frame(message.queue, number))
                parts.append(content_header_frame(message, number))
                body = message.body
                parts.extend(_frame(BODY_FRAME, number, body[at : at + step]) for at in range(0, len(body), step))
            batch.watch(channel.create_future(), confirmations)
            await channel.write_queue.put(ChannelFrame(payload=b"".join(parts), should_close=False))
        except BaseException:
            # Nothing reached the broker: give the delivery tags back, as aiormq does.
            for tag in range(first_tag, channel.delivery_tag + 1):
                channel.confirmations.pop(tag, None)
            channel.delivery_tag = first_tag - 1
            batch.abandon(confirmations)
            raise
    return confirmations


# Encoding the frames of a message with pamqp took ~25 µs (its generic marshalling of a
# Basic.Publish and of the properties); these few fixed shapes are encoded directly, and checked
# byte for byte against pamqp's encoding in tests/unit/common/amqp/fastpath/test_publishing.py.
HEADER_FRAME, BODY_FRAME = 2, 3  # AMQP 0-9-1 frame types
FRAME_END = b"\xce"
BASIC_CLASS = 60
# Basic property flags, in the order of the properties on the wire.
CONTENT_TYPE, DELIVERY_MODE, EXPIRATION, MESSAGE_ID = 0x8000, 0x1000, 0x0100, 0x0080
_JSON = b"\x10application/json"  # content_type as a short string


def _frame(kind: int, channel_number: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel_number, len(payload)) + payload + FRAME_END


@lru_cache(maxsize=1024)
def _publish_frame(queue: str, channel_number: int) -> bytes:
    """The Basic.Publish method frame of every message to ``queue`` on a channel: the same bytes each time."""
    return marshal(Basic.Publish(exchange="", routing_key=queue, mandatory=True), channel_number)


def _short_string(value: str) -> bytes | None:
    encoded = value.encode()
    return None if len(encoded) > 255 else bytes((len(encoded),)) + encoded


def content_header_frame(message: Outgoing, channel_number: int) -> bytes:
    """The content header frame of ``message``: its size and properties (what pamqp would encode)."""
    message_id = _short_string(message.message_id)
    if message.headers is not None or message_id is None:  # a field table (dead letters): pamqp encodes it
        return marshal(ContentHeader(properties=message.properties(), body_size=len(message.body)), channel_number)
    flags = CONTENT_TYPE | DELIVERY_MODE | MESSAGE_ID
    expiration = b""
    if message.expiration_ms is not None:
        flags |= EXPIRATION
        expiration = _short_string(str(message.expiration_ms)) or b""
    payload = struct.pack(">HHQH", BASIC_CLASS, 0, len(message.body), flags) + _JSON + bytes((PERSISTENT,))
    return _frame(HEADER_FRAME, channel_number, payload + expiration + message_id)


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
