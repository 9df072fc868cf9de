"""fastpath.publishing: a batch of publishes in one write on aiormq internals, and the public path beside it.

Stand-in channels here; tests/integration/test_publishing.py runs both paths on the real broker.
"""

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.frame import marshal, unmarshal
from pamqp.header import ContentHeader

from services.common.amqp import fastpath
from services.common.amqp.fastpath import gate
from services.common.amqp.outgoing import Outgoing
from services.common.amqp.topology import PERSISTENT

REPO_ROOT = Path(__file__).resolve().parents[5]

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
    assert [h.properties.message_id for h in headers] == [m.message_id for m in BATCH]
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
        # for a Basic.Return in flight: it names the message by its message_id
        assert channel.message_id_delivery_tag == {TWO_IDS[0].message_id: 42, TWO_IDS[1].message_id: 43}
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


def test_an_aiormq_that_changed_what_the_batch_relies_on_takes_the_public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "usable", lambda part: part is not gate.BATCHED_PUBLISH)

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
    assert [c["properties"].message_id for c in channel.calls] == [m.message_id for m in BATCH]
    assert all(c["properties"].delivery_mode == PERSISTENT for c in channel.calls)
    assert [r.delivery_tag for r in results] == [1, 2]


@pytest.mark.parametrize(
    "message",
    [
        Outgoing("features", b'{"id": "1700000000.000001"}', "1700000000.000001"),
        Outgoing("t-1.y_true.delay.8000ms", b"x" * 25, "order:17_line-2", expiration_ms=8123),
        Outgoing("y_pred", b"y" * 10, "z" * 64, expiration_ms=0),
        Outgoing("features.dlq", b"bad", "1.5", {"x-dlq-reason": "id: the id is empty", "x-original-queue": "features"}),
        Outgoing("y_true", b"{}", ""),
        Outgoing("features.dlq", b"bad", "é" * 130, {"x-dlq-reason": "too large"}),
    ],
    ids=["plain", "delayed-split-body", "long-id", "dead-letter-headers", "empty-id", "an id past a short string"],
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


def test_with_fastpath_off_publish_the_batch_takes_the_public_path(fastpath_off: Callable[[str], None]) -> None:
    fastpath_off("publish")

    async def scenario() -> tuple[InternalsChannel, PublicChannel, list[Any]]:
        channel, public = InternalsChannel(), PublicChannel()
        channel.basic_publish = public.basic_publish  # type: ignore[attr-defined]  # internals and the public method
        confirmations = await fastpath.publish(channel, BATCH)  # type: ignore[arg-type]  # a stand-in channel
        return channel, public, await asyncio.gather(*confirmations)

    channel, public, results = asyncio.run(scenario())
    assert channel.frames == [] and channel.delivery_tag == 41  # the internals were not touched
    assert [call["body"] for call in public.calls] == [message.body for message in BATCH]  # aiormq's basic_publish each
    assert all(isinstance(result, Basic.Ack) for result in results)
