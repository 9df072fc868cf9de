"""fastpath.frames: frames read in two reads and decoded directly, for our transport's connections only."""

import asyncio
from collections.abc import Callable
from typing import Any

import aiormq
import aiormq.connection
import pytest
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.frame import marshal, unmarshal
from pamqp.header import ContentHeader

from services.common.amqp.fastpath import frames, gate
from services.common.amqp.fastpath.frames import AIORMQ_FRAME_RECEIVER


def _slots(value: Any) -> dict[str, Any]:
    """Every attribute of a pamqp frame object (they have __slots__), nested properties too."""
    names = [name for cls in type(value).__mro__ for name in getattr(cls, "__slots__", ())] or list(vars(value))
    found = {name: getattr(value, name, None) for name in names}
    return {
        name: _slots(v) if hasattr(v, "__slots__") and not isinstance(v, str | bytes | int) else v for name, v in found.items()
    }


JSON = "application/json"
FRAMES: dict[str, Any] = {
    "a delivery": Basic.Deliver(
        consumer_tag="ctag1.0123456789abcdef", delivery_tag=2**40 + 7, exchange="", routing_key="p.y_true"
    ),
    "a redelivery from an exchange": Basic.Deliver(
        consumer_tag="c", delivery_tag=1, redelivered=True, exchange="ex", routing_key="ü.ключ"
    ),
    "a confirm": Basic.Ack(delivery_tag=123, multiple=False),
    "a confirm of many": Basic.Ack(delivery_tag=2**33, multiple=True),
    "our header": ContentHeader(
        body_size=120,
        properties=Basic.Properties(content_type="application/json", delivery_mode=2, message_id="1700000000.000001"),
    ),
    "a delayed label's header": ContentHeader(
        body_size=5,
        properties=Basic.Properties(content_type="application/json", delivery_mode=2, expiration="8000", message_id="x"),
    ),
    "a header without properties": ContentHeader(body_size=0),
    "a header with a table": ContentHeader(body_size=3, properties=Basic.Properties(headers={"x-death": "a"}, message_id="m")),
    "a header with a priority": ContentHeader(body_size=3, properties=Basic.Properties(priority=3, delivery_mode=1)),
    "a body": ContentBody(b'{"id": "1700000000.000001", "body": 151.0}'),
    "another method": Basic.ConsumeOk(consumer_tag="ctag"),
    "a nack": Basic.Nack(delivery_tag=5, multiple=True, requeue=False),
}


@pytest.mark.parametrize("frame", FRAMES.values(), ids=FRAMES.keys())
def test_frames_read_fast_are_what_pamqp_decodes(frame: Any) -> None:
    """Read through FastFrameReceiver, a frame is the object pamqp's unmarshal makes of it, same bytes counted."""
    wire = marshal(frame, 3)

    async def read() -> list[Any]:
        reader = asyncio.StreamReader()
        reader.feed_data(wire + wire)
        reader.feed_eof()
        receiver = frames.FastFrameReceiver(reader)
        receiver.started = True  # past the connection's first frame
        return [await receiver.get_frame(), await receiver.get_frame()]

    expected = unmarshal(wire)
    for count, channel, decoded in asyncio.run(read()):
        assert (count, channel, type(decoded)) == (expected[0], expected[1], type(expected[2]))
        assert _slots(decoded) == _slots(expected[2])


def test_the_frames_of_a_delivery_and_a_confirm_are_decoded_without_pamqp() -> None:
    decoded = {name: frames.decode_frame(marshal(frame, 1)[0], marshal(frame, 1)[7:]) for name, frame in FRAMES.items()}
    assert {name for name, frame in decoded.items() if frame is not None} == {
        "a delivery", "a redelivery from an exchange", "a confirm", "a confirm of many",
        "our header", "a delayed label's header", "a header without properties", "a body",
    }  # fmt: skip


@pytest.mark.parametrize(
    "wire",
    [marshal(Basic.Ack(delivery_tag=1), 1)[:10], marshal(Basic.Ack(delivery_tag=1), 1)[:-1] + b"\x00"],
    ids=["cut short", "no frame end"],
)
def test_a_broken_stream_fails_as_aiormq_fails_it(wire: bytes) -> None:
    """The same error, in the same words (they reach the logs and a 503's reason), as aiormq's own reader."""

    async def read(receiver_class: type[aiormq.connection.FrameReceiver]) -> BaseException:
        reader = asyncio.StreamReader()
        reader.feed_data(wire)
        reader.feed_eof()
        receiver = receiver_class(reader)
        receiver.started = True
        try:
            await receiver.get_frame()
        except Exception as exc:  # noqa: BLE001 - the error is what is compared
            return exc
        raise AssertionError("a broken frame was read")

    ours, aiormqs = asyncio.run(read(frames.FastFrameReceiver)), asyncio.run(read(AIORMQ_FRAME_RECEIVER))
    assert (type(ours), str(ours)) == (type(aiormqs), str(aiormqs))


def test_only_a_connection_read_through_our_stream_reader_reads_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", AIORMQ_FRAME_RECEIVER)  # as aiormq has it; restored after

    async def receivers() -> tuple[Any, Any, type[Any]]:
        loop = asyncio.get_running_loop()
        ours = frames.stream_reader(2**16, loop)
        # what aiormq's Connection.connect does with the reader its transport factory gave it
        return aiormq.connection.FrameReceiver(ours), aiormq.connection.FrameReceiver(asyncio.StreamReader()), type(ours)

    fast, plain, reader_type = asyncio.run(receivers())
    assert isinstance(fast, frames.FastFrameReceiver)
    assert not isinstance(plain, frames.FastFrameReceiver)
    assert type(plain).get_frame is AIORMQ_FRAME_RECEIVER.get_frame and plain.started is False  # aiormq's own, as it made it
    assert issubclass(reader_type, asyncio.StreamReader)


def test_where_aiormq_changed_its_frame_reading_every_connection_reads_as_aiormq_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", AIORMQ_FRAME_RECEIVER)
    monkeypatch.setattr(gate, "usable", lambda part: part is not gate.FAST_FRAMES)

    async def receiver() -> Any:
        return aiormq.connection.FrameReceiver(frames.stream_reader(2**16, asyncio.get_running_loop()))

    assert type(asyncio.run(receiver())) is AIORMQ_FRAME_RECEIVER
    assert aiormq.connection.FrameReceiver is AIORMQ_FRAME_RECEIVER  # the name was left alone


def test_with_fastpath_off_frames_a_connection_gets_a_plain_reader_read_as_aiormq_reads(
    fastpath_off: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", AIORMQ_FRAME_RECEIVER)  # as aiormq has it; restored after
    fastpath_off("frames")

    async def reader_and_receiver() -> tuple[asyncio.StreamReader, Any]:
        reader = frames.stream_reader(2**16, asyncio.get_running_loop())
        return reader, aiormq.connection.FrameReceiver(reader)

    reader, receiver = asyncio.run(reader_and_receiver())
    assert type(reader) is asyncio.StreamReader
    assert type(receiver) is AIORMQ_FRAME_RECEIVER
    assert aiormq.connection.FrameReceiver is AIORMQ_FRAME_RECEIVER  # the name was left alone
