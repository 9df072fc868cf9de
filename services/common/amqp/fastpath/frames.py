"""Frames read in two reads, and the frames of a delivery and of a confirm decoded directly.

aiormq reads each frame with three awaited reads under a lock and decodes it with pamqp's
generic unmarshalling: ~30 µs for a delivery's three frames (timeit), ~20-25 % of a consuming
service's CPU (py-spy). ``FastFrameReceiver`` reads a frame in two reads and decodes a
Basic.Deliver, a Basic.Ack, a body and a content header of the properties our publishers set with
``struct``, into the objects pamqp makes; every other frame, and anything unexpected, by pamqp.

Per connection: aiormq makes a connection's frame receiver from the name
``aiormq.connection.FrameReceiver`` and the StreamReader its transport factory gave it, and offers
no other hook. So ``stream_reader`` (what our transport factory reads a connection with) gives a
``FastFramesReader``, and that name is pointed, once, at a class that makes a ``FastFrameReceiver``
for such a reader and is aiormq's own receiver for any other: a connection made without our
transport (a test's, another library's) reads as aiormq reads. What it relies on is
``gate.FAST_FRAMES``; on another aiormq, every connection reads with aiormq's own receiver.
"""

import asyncio
import struct
from typing import Any

import aiormq.connection
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from pamqp.frame import unmarshal
from pamqp.header import ContentHeader

from services.common.amqp.fastpath import gate
from services.common.amqp.fastpath.publishing import (
    BASIC_CLASS,
    BODY_FRAME,
    CONTENT_TYPE,
    DELIVERY_MODE,
    EXPIRATION,
    HEADER_FRAME,
    MESSAGE_ID,
)

AIORMQ_FRAME_RECEIVER = aiormq.connection.FrameReceiver  # aiormq's own, whatever the name points at later

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


class FastFramesReader(asyncio.StreamReader):
    """The StreamReader of a connection whose frames ``FastFrameReceiver`` reads."""


def stream_reader(limit: int, loop: asyncio.AbstractEventLoop) -> asyncio.StreamReader:
    """The StreamReader for a new connection's socket: one read with ``FastFrameReceiver`` where
    this aiormq allows (``gate.FAST_FRAMES``), else a plain one (aiormq's own reader)."""
    if not gate.usable(gate.FAST_FRAMES):
        return asyncio.StreamReader(limit=limit, loop=loop)
    if aiormq.connection.FrameReceiver is AIORMQ_FRAME_RECEIVER:
        aiormq.connection.FrameReceiver = FrameReceiverByReader  # type: ignore[misc]  # gated by FAST_FRAMES: see the module
    return FastFramesReader(limit=limit, loop=loop)


class FastFrameReceiver(AIORMQ_FRAME_RECEIVER):
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


class FrameReceiverByReader(AIORMQ_FRAME_RECEIVER):
    """What ``aiormq.connection.FrameReceiver`` names once a fast reader was made: a
    ``FastFrameReceiver`` for a ``FastFramesReader``, aiormq's own receiver (unchanged: this class
    adds nothing to it) for any other reader."""

    __wrapped__ = AIORMQ_FRAME_RECEIVER  # inspect.getsource, and so gate's fingerprint, see aiormq's own

    def __new__(cls, reader: asyncio.StreamReader) -> Any:
        if isinstance(reader, FastFramesReader):
            return FastFrameReceiver(reader)
        return super().__new__(cls)


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
