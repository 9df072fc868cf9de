"""fastpath: the batched publish on aiormq internals, its version check, and the public path beside it.

Stand-in channels here; tests/integration/test_publishing.py runs both paths on the real broker.
"""

import asyncio
from collections import OrderedDict
from typing import Any

import aiormq
import aiormq.connection
import pytest
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.frame import marshal, unmarshal
from pamqp.header import ContentHeader

from services.common.amqp import fastpath
from services.common.amqp.fastpath import Outgoing
from services.common.amqp.topology import PERSISTENT

BATCH = [Outgoing("features", b'{"n": 1}', "1.000001"), Outgoing("y_true", b"x" * 25, "1.000001", {"h": "v"})]
TWO_IDS = [Outgoing("features", b"{}", "1.000001"), Outgoing("features", b"{}", "2.000001")]


def unmarshal_all(payload: bytes) -> list[Any]:
    """The AMQP frames in a marshalled payload, in order (all on channel 7)."""
    frames, at = [], 0
    while at < len(payload):
        used, channel_number, frame = unmarshal(payload[at:])
        assert channel_number == 7
        frames.append(frame)
        at += used
    return frames


class InternalsChannel:
    """What send_batch uses of an aiormq 7.2 Channel."""

    def __init__(self, fail_put: bool = False) -> None:
        self.lock = asyncio.Lock()
        self.delivery_tag = 41
        self.confirmations: OrderedDict[int, asyncio.Future[Any]] = OrderedDict()
        self.message_id_delivery_tag: dict[str, int] = {}
        self.publisher_confirms = True
        self.max_content_size = 10
        self.number = 7
        self.frames: list[ChannelFrame] = []
        self.fail_put = fail_put
        self.write_queue = self
        self.created: list[asyncio.Future[Any]] = []

    def create_future(self) -> asyncio.Future[Any]:
        """A future of the channel's store (which fails them all when the channel closes); kept in ``created``."""
        self.created.append(asyncio.get_running_loop().create_future())
        return self.created[-1]

    async def put(self, frame: ChannelFrame) -> None:
        if self.fail_put:
            raise ConnectionError("writer gone")
        self.frames.append(frame)


class PublicChannel:
    """Only aiormq's public basic_publish."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def basic_publish(self, body: bytes, **kwargs: Any) -> Basic.Ack:
        self.calls.append({"body": body, **kwargs})
        return Basic.Ack(delivery_tag=len(self.calls))


def test_the_fast_path_is_on_only_for_the_aiormq_it_was_written_for() -> None:
    assert fastpath.FAST_PATH == (fastpath.AIORMQ_VERSION.split(".")[:2] == fastpath.WRITTEN_FOR.split("."))
    # The pinned aiormq is that one: a bump of aiormq must come with a look at fastpath.py.
    assert fastpath.FAST_PATH, f"aiormq {fastpath.AIORMQ_VERSION} is installed, fastpath was written for {fastpath.WRITTEN_FOR}"


def test_a_batch_goes_out_as_one_frame_with_a_tag_and_a_confirmation_each() -> None:
    async def scenario() -> tuple[InternalsChannel, list[asyncio.Future[Any]]]:
        channel = InternalsChannel()
        return channel, await fastpath.publish(channel, BATCH)  # type: ignore[arg-type]  # a stand-in channel

    channel, confirmations = asyncio.run(scenario())
    assert len(channel.frames) == 1
    frames = unmarshal_all(channel.frames[0].payload)
    publishes = [f for f in frames if isinstance(f, Basic.Publish)]
    headers = [f for f in frames if isinstance(f, ContentHeader)]
    bodies = [f for f in frames if isinstance(f, ContentBody)]
    assert [p.routing_key for p in publishes] == ["features", "y_true"] and all(p.mandatory for p in publishes)
    assert all(h.properties.delivery_mode == PERSISTENT for h in headers)
    assert [h.properties.message_id for h in headers] == ["1.000001", "1.000001"]
    assert headers[1].properties.headers == {"h": "v"}
    assert b"".join(b.value for b in bodies) == b'{"n": 1}' + b"x" * 25  # the 25 bytes split at max_content_size
    assert len(bodies) == 1 + 3
    assert list(channel.confirmations) == [42, 43] and channel.delivery_tag == 43
    assert [channel.confirmations[t] for t in (42, 43)] == confirmations


def test_a_batch_that_could_not_be_queued_gives_its_tags_back() -> None:
    async def scenario() -> tuple[InternalsChannel, list[asyncio.Future[Any]]]:
        channel = InternalsChannel(fail_put=True)
        with pytest.raises(ConnectionError):
            await fastpath.publish(channel, BATCH)  # type: ignore[arg-type]  # a stand-in channel
        return channel, channel.created

    channel, created = asyncio.run(scenario())
    assert channel.delivery_tag == 41 and not channel.confirmations and not channel.message_id_delivery_tag
    # One future of the channel's store stands for the batch; it is settled, so it leaves the store.
    assert len(created) == 1 and created[0].cancelled()


def test_confirmations_end_with_their_acks_and_the_message_ids_are_forgotten() -> None:
    async def scenario() -> tuple[InternalsChannel, list[asyncio.Future[Any]], list[asyncio.Future[Any]]]:
        channel = InternalsChannel()
        confirmations = await fastpath.publish(channel, TWO_IDS)  # type: ignore[arg-type]  # a stand-in channel
        assert channel.message_id_delivery_tag == {"1.000001": 42, "2.000001": 43}  # for a Basic.Return in flight
        for tag in (42, 43):  # the broker's acks, as aiormq hands them on
            channel.confirmations.pop(tag).set_result(Basic.Ack(delivery_tag=tag))
        await asyncio.sleep(0)
        return channel, confirmations, channel.created

    channel, confirmations, created = asyncio.run(scenario())
    assert [c.result().delivery_tag for c in confirmations] == [42, 43]
    assert created[0].done() and not channel.message_id_delivery_tag


def test_a_channel_that_closes_cancels_the_confirmations_still_pending() -> None:
    """aiormq fails every future of a closing channel's store: the batch's one cancels the rest,
    so the publisher sends them again at once instead of waiting out its timeout."""

    async def scenario() -> list[asyncio.Future[Any]]:
        channel = InternalsChannel()
        confirmations = await fastpath.publish(channel, BATCH)  # type: ignore[arg-type]  # a stand-in channel
        channel.confirmations.pop(42).set_result(Basic.Ack(delivery_tag=42))
        created = channel.created
        created[0].set_exception(ConnectionError("channel closed"))  # what reject_all does
        await asyncio.sleep(0)
        created[0].exception()
        return confirmations

    first, second = asyncio.run(scenario())
    assert isinstance(first.result(), Basic.Ack) and second.cancelled()


def test_another_aiormq_version_takes_the_public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "FAST_PATH", False)

    async def scenario() -> tuple[InternalsChannel, list[Any]]:
        channel = InternalsChannel()
        channel.basic_publish = PublicChannel().basic_publish  # type: ignore[attr-defined]  # internals and the public method
        confirmations = await fastpath.publish(channel, BATCH)  # type: ignore[arg-type]  # a stand-in channel
        return channel, await asyncio.gather(*confirmations)

    channel, results = asyncio.run(scenario())
    assert channel.frames == []  # the internals were not touched
    assert all(isinstance(result, Basic.Ack) for result in results)


def test_a_channel_without_the_internals_takes_the_public_path_with_the_same_messages() -> None:
    async def scenario() -> tuple[PublicChannel, list[Any]]:
        channel = PublicChannel()
        confirmations = await fastpath.publish(channel, BATCH)  # type: ignore[arg-type]  # a stand-in channel
        return channel, await asyncio.gather(*confirmations)

    channel, results = asyncio.run(scenario())
    assert [c["routing_key"] for c in channel.calls] == ["features", "y_true"]
    assert [c["body"] for c in channel.calls] == [m.body for m in BATCH]
    assert all(c["mandatory"] and c["exchange"] == "" for c in channel.calls)
    assert [c["properties"].message_id for c in channel.calls] == ["1.000001", "1.000001"]
    assert all(c["properties"].delivery_mode == PERSISTENT for c in channel.calls)
    assert [r.delivery_tag for r in results] == [1, 2]


def test_the_frame_buffer_is_enlarged_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiormq

    monkeypatch.setattr(aiormq.Connection, "FRAME_BUFFER_SIZE", 10)
    import services.common.amqp.link  # noqa: F401 - importing must change nothing

    assert aiormq.Connection.FRAME_BUFFER_SIZE == 10
    fastpath.enlarge_frame_buffer()
    assert aiormq.Connection.FRAME_BUFFER_SIZE == fastpath.FRAME_BUFFER_SIZE


@pytest.mark.parametrize(
    "message",
    [
        Outgoing("features", b'{"id": "1700000000.000001"}', "1700000000.000001"),
        Outgoing("t-1.y_true.delay.8000ms", b"x" * 25, "order:17_line-2", expiration_ms=8123),
        Outgoing("y_pred", b"y" * 10, "z" * 64, expiration_ms=0),
        Outgoing("features.dlq", b"bad", "1.5", {"x-dlq-reason": "id: the id is empty", "x-original-queue": "features"}),
        Outgoing("y_true", b"{}", ""),
    ],
    ids=["plain", "delayed-split-body", "long-id", "dead-letter-headers", "empty-id"],
)
def test_the_frames_are_the_bytes_pamqp_would_send(message: Outgoing) -> None:
    """send_batch encodes its frames itself (pamqp's generic encoding cost ~25 µs a message): they
    must be exactly what pamqp encodes for the same publish."""

    async def scenario() -> bytes:
        channel = InternalsChannel()
        await fastpath.publish(channel, [message, message])  # type: ignore[arg-type]  # a stand-in channel
        return channel.frames[0].payload

    step = InternalsChannel().max_content_size
    expected: list[Basic.Publish | ContentHeader | ContentBody] = [
        Basic.Publish(exchange="", routing_key=message.queue, mandatory=True),
        ContentHeader(properties=message.properties(), body_size=len(message.body)),
        *(ContentBody(message.body[at : at + step]) for at in range(0, len(message.body), step)),
    ]
    assert asyncio.run(scenario()) == b"".join(marshal(frame, 7) for frame in expected) * 2


class DeliveringChannel:
    """What deliver_inline relies on in an aiormq channel: a delivery's header and body frames, its consumers."""

    def __init__(self, consumer: Any) -> None:
        self.consumers = {"tag": consumer}
        self.tasks: list[Any] = []

    async def _on_deliver_frame(self, _frame: Basic.Deliver) -> None:  # aiormq's own, replaced
        raise AssertionError("aiormq's own way was taken")

    async def _Channel__get_content_header(self) -> ContentHeader:  # noqa: N802 - the name aiormq's private method has once mangled
        return ContentHeader(body_size=2)

    async def _read_content(self, frame: Basic.Deliver, _header: ContentHeader) -> tuple[int | None, bytes]:
        return frame.delivery_tag, b"{}"

    def create_task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    @staticmethod
    def _on_consumer_done(task: Any) -> None:
        pass


def test_an_inline_consumer_is_called_at_once_and_others_in_a_task_each(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[Any] = []

    async def in_a_task(message: Any) -> None:
        taken.append(("task", message))

    def wrapped(inline: Any) -> Any:  # as aiormq's basic_consume keeps a callback: functools.wraps around it
        async def callback(message: Any) -> None: ...

        callback.__wrapped__ = inline  # type: ignore[attr-defined]
        return callback

    class Inline:
        def inline(self, message: Any) -> None:
            taken.append(("inline", message))

    async def scenario(consumer: Any) -> DeliveringChannel:
        channel = DeliveringChannel(consumer)
        assert fastpath.deliver_inline(channel)  # type: ignore[arg-type]  # a stand-in channel
        await channel._on_deliver_frame(Basic.Deliver(consumer_tag="tag", delivery_tag=7))
        await asyncio.gather(*channel.tasks)
        return channel

    inline_channel = asyncio.run(scenario(wrapped(Inline())))
    assert taken == [("inline", (7, b"{}"))] and inline_channel.tasks == []
    taken.clear()
    task_channel = asyncio.run(scenario(in_a_task))
    assert taken == [("task", (7, b"{}"))] and len(task_channel.tasks) == 1

    monkeypatch.setattr(fastpath, "FAST_PATH", False)
    assert not fastpath.deliver_inline(DeliveringChannel(in_a_task))  # type: ignore[arg-type]  # another aiormq: its own way


# aiormq's own frame reader, whatever aiormq.connection.FrameReceiver is now (read_frames_fast
# replaces it for the whole process once a BrokerLink starts, in tests too).
AIORMQ_FRAME_RECEIVER: type[aiormq.connection.FrameReceiver] = fastpath.FastFrameReceiver.__mro__[1]
assert AIORMQ_FRAME_RECEIVER.__module__ == "aiormq.connection"


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
        receiver = fastpath.FastFrameReceiver(reader)
        receiver.started = True  # past the connection's first frame
        return [await receiver.get_frame(), await receiver.get_frame()]

    expected = unmarshal(wire)
    for count, channel, decoded in asyncio.run(read()):
        assert (count, channel, type(decoded)) == (expected[0], expected[1], type(expected[2]))
        assert _slots(decoded) == _slots(expected[2])


def test_the_frames_of_a_delivery_and_a_confirm_are_decoded_without_pamqp() -> None:
    decoded = {name: fastpath.decode_frame(marshal(frame, 1)[0], marshal(frame, 1)[7:]) for name, frame in FRAMES.items()}
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

    ours, aiormqs = asyncio.run(read(fastpath.FastFrameReceiver)), asyncio.run(read(AIORMQ_FRAME_RECEIVER))
    assert (type(ours), str(ours)) == (type(aiormqs), str(aiormqs))


def test_frames_are_read_fast_only_when_asked_and_on_the_aiormq_it_was_written_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiormq's own reader to start from (a BrokerLink started earlier in this process may have
    # installed the fast one); undone after the test
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", AIORMQ_FRAME_RECEIVER)
    monkeypatch.setattr(fastpath, "FAST_PATH", False)
    assert not fastpath.read_frames_fast()
    assert aiormq.connection.FrameReceiver is not fastpath.FastFrameReceiver
    monkeypatch.setattr(fastpath, "FAST_PATH", True)
    assert fastpath.read_frames_fast()
    assert aiormq.connection.FrameReceiver is fastpath.FastFrameReceiver
