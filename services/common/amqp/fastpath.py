"""The one module that uses aiormq internals, and the public path beside it.

Why it exists: aiormq's ``basic_publish`` sends one message per call, each taking the
channel lock and a turn of the event loop, and its writer queue holds 10 frames: a batch of
publishes leaves one message per loop turn. ``send_batch`` does what ``basic_publish`` does
(delivery tags, confirmation futures, the mandatory-return bookkeeping, rollback when
nothing was queued) for a whole batch under one lock as one queued frame. Measured: with the
coalescing transport, a 5,000-sample burst went from ~10,000 socket writes per service to
~20, and the pipeline from ~3.6 to ~1.4 ms of CPU per sample (docs/performance.md). Since
issue 17 it also encodes the frames itself (``content_header_frame``; byte for byte pamqp's) and
gives the channel's future store one future per batch instead of one per message, and
``deliver_inline`` hands each delivery to a consumer without a task per delivery.

What it relies on (aiormq 7.2): ``Channel.lock``, ``.delivery_tag``, ``.confirmations``,
``.message_id_delivery_tag``, ``.write_queue``, ``.max_content_size``, ``.number``,
``.create_future()``, and ``Connection.FRAME_BUFFER_SIZE``. None of them is declared by
aiormq's ``AbstractChannel``; for deliveries, ``DELIVERY_INTERNALS``. So: the version is
checked at import (``FAST_PATH``), the attributes on first use, and anything else takes the
public path: gathered ``basic_publish`` calls, and a task per delivery as aiormq makes it —
correct on any version, just slower.
"""

import asyncio
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib.metadata import version
from types import MethodType
from typing import Any

import aiormq
import aiormq.connection
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.common import FieldTable
from pamqp.exceptions import PAMQPException
from pamqp.frame import marshal, unmarshal
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
                # A Basic.Return names the message by its message_id: this maps it to the tag.
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
# byte for byte against pamqp's encoding in tests/unit/common/amqp/test_fastpath.py.
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
    flags = CONTENT_TYPE | DELIVERY_MODE | (MESSAGE_ID if message.message_id else 0)  # pamqp leaves out an empty one
    if not message.message_id:
        message_id = b""
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


# -- deliveries without a task each

# What deliver_inline relies on (aiormq 7.2's Channel): its reader awaits ``_on_deliver_frame``
# for each Basic.Deliver, which reads the header and body frames (``__get_content_header``,
# ``_read_content``) and runs the consumer in a task of its own (``consumers``, ``create_task``,
# ``_on_consumer_done``).
DELIVERY_INTERNALS = ("_on_deliver_frame", "_Channel__get_content_header", "_read_content", "consumers", "_on_consumer_done")


def deliver_inline(channel: aiormq.abc.AbstractChannel) -> bool:
    """Have ``channel`` call a consumer callback's ``inline`` function (when it has one) at once
    for each delivery, instead of running the callback in a task of its own.

    aiormq runs every consumer callback in a new task, registered in two future stores with
    three done callbacks: ~10 % of metric_api's CPU (py-spy). A consumer whose work per delivery
    is synchronous (validate, put in its inbox) does not need one. ``inline`` must not block and
    must not raise: it runs in the channel's frame reader. True when this channel now does so;
    False (aiormq's own way, a task per delivery) on an aiormq this was not written for.
    """
    if not (FAST_PATH and all(hasattr(channel, name) for name in DELIVERY_INTERNALS)):
        return False
    if "_on_deliver_frame" not in vars(channel):
        channel._on_deliver_frame = MethodType(_on_deliver_frame, channel)  # type: ignore[attr-defined]  # an aiormq internal, checked above
    return True


async def _on_deliver_frame(channel: Any, frame: Basic.Deliver) -> None:
    """aiormq 7.2's ``Channel._on_deliver_frame``, calling an ``inline`` consumer without a task."""
    header = await channel._Channel__get_content_header()
    message = await channel._read_content(frame, header)
    consumer = channel.consumers.get(frame.consumer_tag) if frame.consumer_tag is not None else None
    if consumer is None:
        return
    # basic_consume keeps the callback wrapped in a coroutine function (aiormq.tools.awaitable, functools.wraps)
    inline = getattr(getattr(consumer, "__wrapped__", consumer), "inline", None)
    if inline is None:
        task = channel.create_task(consumer(message))
        task.add_done_callback(channel._on_consumer_done)
        return
    try:
        inline(message)
    except Exception:  # the reader must go on; the delivery stays unacked until its channel closes (then redelivered)
        log.exception("a consumer failed on delivery %s", frame.delivery_tag)


# -- frames read without pamqp's generic decoding

# What read_frames_fast relies on (aiormq 7.2): ``aiormq.connection.FrameReceiver``, which the
# connection makes for its socket's StreamReader and iterates in one task, each frame a tuple
# (bytes, channel number, pamqp frame object); its ``started``, and the errors it raises.
METHOD_FRAME, FRAME_END_BYTE = 1, 0xCE
_FRAME_HEAD = struct.Struct(">BHI")
_DELIVER_INDEX, _ACK_INDEX = 0x003C003C, 0x003C0050  # Basic.Deliver, Basic.Ack (class 60, methods 60 and 80)
# The properties decoded here, in their order on the wire: what our publishers set. A message
# with any other (a header table, a priority...) is decoded by pamqp.
_SHORT_PROPERTIES = (
    (CONTENT_TYPE, "content_type"),
    (DELIVERY_MODE, "delivery_mode"),
    (EXPIRATION, "expiration"),
    (MESSAGE_ID, "message_id"),
)
_KNOWN_FLAGS = CONTENT_TYPE | DELIVERY_MODE | EXPIRATION | MESSAGE_ID


def read_frames_fast() -> bool:
    """Have the connections this process makes from now on read frames with ``FastFrameReceiver``.

    aiormq reads each frame with three awaited reads under a lock and decodes it with pamqp's
    generic unmarshalling: ~30 µs for a delivery's three frames (timeit), ~20-25 % of a
    consuming service's CPU (py-spy). Called explicitly by BrokerLink, never by importing a
    module; False (aiormq's own reader) on an aiormq this was not written for.
    """
    if not (FAST_PATH and hasattr(aiormq.connection, "FrameReceiver")):
        return False
    aiormq.connection.FrameReceiver = FastFrameReceiver  # type: ignore[misc]  # an aiormq internal, checked above
    return True


class FastFrameReceiver(aiormq.connection.FrameReceiver):
    """aiormq's FrameReceiver, reading a frame in two reads and decoding the frames of a
    delivery and of a confirm directly; every other frame, and anything unexpected, by pamqp."""

    async def get_frame(self) -> Any:
        if not self.started:  # the first frame: aiormq's own checks (a protocol header instead of a frame)
            return await super().get_frame()
        reader = self.reader
        if reader.at_eof():
            del self.reader
            raise StopAsyncIteration
        try:
            head = await reader.readexactly(7)
            frame_type, channel_number, size = _FRAME_HEAD.unpack(head)
            payload = await reader.readexactly(size + 1)
        except (asyncio.IncompleteReadError, OSError) as exc:
            raise _read_error(exc) from exc
        frame = decode_frame(frame_type, payload)
        if frame is not None:
            return 8 + size, channel_number, frame
        try:
            return unmarshal(head + payload)
        except PAMQPException as exc:
            raise aiormq.exceptions.InvalidFrameError(str(exc)) from exc


def _read_error(exc: BaseException) -> aiormq.exceptions.AMQPConnectionError:
    """The error aiormq's FrameReceiver raises for ``exc`` (the same words: they reach logs and 503s)."""
    if isinstance(exc, asyncio.IncompleteReadError):
        return aiormq.exceptions.AMQPConnectionError(
            f"Server connection unexpectedly closed. Read {len(exc.partial)} bytes but {exc.expected} bytes expected"
        )
    if isinstance(exc, ConnectionRefusedError):
        return aiormq.exceptions.AMQPConnectionError(f"Server connection refused: {exc!r}")
    if isinstance(exc, ConnectionResetError):
        return aiormq.exceptions.AMQPConnectionError(f"Server connection reset: {exc!r}")
    if isinstance(exc, ConnectionError):
        return aiormq.exceptions.AMQPConnectionError(f"Server connection error: {exc!r}")
    return aiormq.exceptions.AMQPConnectionError(f"Server communication error: {exc!r}")


def decode_frame(frame_type: int, payload: bytes) -> Any:
    """The frame object of a delivery's method, header or body frame, or of a Basic.Ack, as pamqp
    would make it; None for any other frame (and for anything unexpected): pamqp decodes those.
    ``payload``: the frame after its 7-byte head, frame-end octet included."""
    if not payload or payload[-1] != FRAME_END_BYTE:
        return None
    try:
        if frame_type == BODY_FRAME:
            return ContentBody(payload[:-1])
        if frame_type == HEADER_FRAME:
            return _content_header(payload)
        if frame_type == METHOD_FRAME:
            (index,) = struct.unpack_from(">I", payload)
            if index == _DELIVER_INDEX:
                return _deliver(payload)
            if index == _ACK_INDEX:
                ack = object.__new__(Basic.Ack)
                ack.delivery_tag, bits = struct.unpack_from(">QB", payload, 4)
                ack.multiple = bool(bits & 1)
                return ack
    except (struct.error, IndexError, UnicodeDecodeError):
        return None
    return None


def _short(payload: bytes, at: int) -> tuple[str, int]:
    end = at + 1 + payload[at]
    if end > len(payload) - 1:
        raise IndexError("a short string past the frame's end")
    return payload[at + 1 : end].decode(), end


def _deliver(payload: bytes) -> Basic.Deliver | None:
    """None for a frame with bytes left over: pamqp then says what is wrong with it."""
    deliver = object.__new__(Basic.Deliver)  # pamqp's __init__ validates what a broker sent: 1.9 µs
    deliver.consumer_tag, at = _short(payload, 4)
    deliver.delivery_tag, bits = struct.unpack_from(">QB", payload, at)
    deliver.redelivered = bool(bits & 1)
    deliver.exchange, at = _short(payload, at + 9)
    deliver.routing_key, at = _short(payload, at)
    return deliver if at == len(payload) - 1 else None


def _content_header(payload: bytes) -> ContentHeader | None:
    class_id, weight, body_size, flags = struct.unpack_from(">HHQH", payload)
    if flags & ~_KNOWN_FLAGS or class_id != BASIC_CLASS:
        return None
    properties = Basic.Properties()
    at = 14
    for flag, name in _SHORT_PROPERTIES:
        if flags & flag:
            if flag == DELIVERY_MODE:
                properties.delivery_mode, at = payload[at], at + 1
            else:
                value, at = _short(payload, at)
                setattr(properties, name, value)
    if at != len(payload) - 1:
        return None
    header = ContentHeader(weight, body_size, properties)
    header.class_id = class_id
    return header
