"""ConfirmedPublisher.publish_many against the real broker: every message, intact, in order, in few writes."""

import asyncio
from typing import Any

import aio_pika
import pytest
from prometheus_client import REGISTRY

from services.common.amqp import transport
from services.common.amqp.fastpath import frames, gate
from services.common.amqp.publisher import ConfirmedPublisher, Outgoing
from services.common.amqp.topology import PERSISTENT, declare_queue
from services.common.amqp.transport import CoalescingRobustConnection

pytestmark = [pytest.mark.broker]


async def drain(channel: aio_pika.abc.AbstractChannel, name: str, count: int) -> list[Any]:
    queue = await channel.declare_queue(name, passive=True)
    received: list[Any] = []
    while len(received) < count:
        message = await queue.get(timeout=10, fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        await message.ack()
        received.append(message)
    return received


async def bodies_in(channel: aio_pika.abc.AbstractChannel, name: str, within_s: float) -> list[bytes]:
    """The bodies of what reaches queue ``name`` within ``within_s`` seconds (taken off it)."""
    queue = await channel.declare_queue(name, passive=True)
    bodies: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        message = await queue.get(fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        await message.ack()
        bodies.append(message.body)
    return bodies


def published(queue: str) -> float:
    return REGISTRY.get_sample_value("messages_published_total", {"queue": queue}) or 0.0


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast path", "public path"])
def test_a_batch_arrives_whole_in_order_and_leaves_in_a_few_writes(
    amqp_url: str, queue_prefix: str, monkeypatch: pytest.MonkeyPatch, fast_path: bool
) -> None:
    """Both publish paths deliver the same messages; the fast one in a handful of socket writes."""
    if not fast_path:
        monkeypatch.setattr(gate, "usable", lambda part: part is not gate.BATCHED_PUBLISH)
    writes: list[int] = []
    real_flush = transport.CoalescingTransport.flush

    def counting_flush(self: transport.CoalescingTransport) -> None:
        if self._pending:
            writes.append(len(self._pending))
        real_flush(self)

    monkeypatch.setattr(transport.CoalescingTransport, "flush", counting_flush)
    features, labels = f"{queue_prefix}features", f"{queue_prefix}y_true"
    batch = [
        Outgoing(queue, f'{{"n": {n}, "queue": "{queue}"}}'.encode(), f"{n}.000001")
        for n in range(500)
        for queue in (features, labels)
    ]
    big = Outgoing(features, b"x" * 300_000, "big", headers={"x-note": "larger than a frame"})

    async def scenario() -> tuple[list[Any], list[Any], int, float]:
        connection = await aio_pika.connect_robust(amqp_url, connection_class=CoalescingRobustConnection)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            for queue in (features, labels):
                await declare_queue(channel, queue)
            before = published(features)
            publisher = ConfirmedPublisher(channel, timeout_s=10)
            await asyncio.sleep(0.1)
            writes.clear()
            await publisher.publish_many(batch)
            batch_writes = len(writes)
            await publisher.publish_many([big])
            counted = published(features) - before
            got_features = await drain(channel, features, 501)
            got_labels = await drain(channel, labels, 500)
            return got_features, got_labels, batch_writes, counted

    got_features, got_labels, batch_writes, counted = asyncio.run(scenario())

    assert [m.body for m in got_features[:500]] == [m.body for m in batch if m.queue == features]
    assert [m.body for m in got_labels] == [m.body for m in batch if m.queue == labels]
    assert [m.message_id for m in got_labels] == [m.message_id for m in batch if m.queue == labels]
    assert all(m.delivery_mode == PERSISTENT and m.content_type == "application/json" for m in got_features + got_labels)
    assert got_features[500].body == big.body  # split over several body frames, joined by the broker
    assert got_features[500].headers == {"x-note": "larger than a frame"}
    assert counted == 501
    if fast_path:  # 1,000 publishes (3 frames each) left in a handful of socket writes, not one per message
        assert batch_writes <= 5, f"{batch_writes} writes for 1,000 publishes"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast path", "public path"])
def test_a_message_the_broker_returns_fails_its_own_publish_not_its_neighbours(
    amqp_url: str, queue_prefix: str, monkeypatch: pytest.MonkeyPatch, fast_path: bool
) -> None:
    """A sample's features and label go out in one batch, under one sample id. The features queue is
    missing, so the broker returns the features message: that publish must go on (retried until its
    queue exists), and the label, which the broker took, must be published once, not again.

    aiormq finds the publish a Basic.Return is about by the message's AMQP message_id: with the
    sample id as message_id on both, the return failed the label's publish and the features
    message counted as published — lost."""
    if not fast_path:
        monkeypatch.setattr(gate, "usable", lambda part: part is not gate.BATCHED_PUBLISH)
    features, labels = f"{queue_prefix}features", f"{queue_prefix}y_true"
    sample = "1700000000.000001"
    batch = [Outgoing(features, b'{"half": "features"}', sample), Outgoing(labels, b'{"half": "label"}', sample)]

    async def scenario() -> tuple[bool, list[bytes], list[bytes]]:
        connection = await aio_pika.connect_robust(amqp_url, connection_class=CoalescingRobustConnection)
        async with connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await declare_queue(channel, labels)  # not the features queue: the broker returns what goes there
            publisher = ConfirmedPublisher(channel, timeout_s=5)
            publishing = asyncio.create_task(publisher.publish_many(batch))
            await asyncio.sleep(1.0)  # the features message is being retried meanwhile
            waited_for_features = not publishing.done()
            await declare_queue(channel, features)
            await asyncio.wait_for(publishing, 10)
            return waited_for_features, await bodies_in(channel, features, 1.0), await bodies_in(channel, labels, 1.0)

    waited_for_features, got_features, got_labels = asyncio.run(scenario())
    assert waited_for_features, "the returned features message was taken as published"
    assert got_features == [b'{"half": "features"}']
    assert got_labels == [b'{"half": "label"}'], "the label was published again"


def test_only_a_connection_through_the_services_transport_reads_its_frames_fast(
    amqp_url: str, queue_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast frame reader is the services' connections' own (their transport's reader asks for
    it); a plain aio-pika connection made after one of them still reads as aiormq reads."""
    reading_fast: set[int] = set()  # the frame receivers that read with FastFrameReceiver
    real_get_frame = frames.FastFrameReceiver.get_frame

    async def noting(self: frames.FastFrameReceiver) -> Any:
        reading_fast.add(id(self))
        return await real_get_frame(self)

    monkeypatch.setattr(frames.FastFrameReceiver, "get_frame", noting)
    queue = f"{queue_prefix}features"

    async def scenario() -> tuple[int, int]:
        ours = await aio_pika.connect_robust(amqp_url, connection_class=CoalescingRobustConnection)
        async with ours:
            await declare_queue(await ours.channel(), queue)
            after_ours = len(reading_fast)
            plain = await aio_pika.connect(amqp_url)
            async with plain:
                declared = await (await plain.channel()).declare_queue(queue, passive=True)
                assert declared.declaration_result.message_count == 0
            return after_ours, len(reading_fast)

    assert asyncio.run(scenario()) == (1, 1)
