"""BatchConsumer against the real broker: it consumes through aiormq directly (not aio-pika's
Queue.consume), so it must itself consume again when its channel is reopened or the broker
cancels it, and never end up with two consumers on one queue."""

import asyncio
import contextlib
from typing import Any

import aio_pika
import aiormq.channel
import pytest

from services.common.amqp.consumer import BatchConsumer, Delivery, Rejection
from services.common.amqp.fastpath import gate
from services.common.amqp.publisher import ConfirmedPublisher, Outgoing
from services.common.amqp.topology import declare_queue, dlq_name
from services.common.amqp.transport import CoalescingRobustConnection
from services.common.messages import LabelMessage

pytestmark = [pytest.mark.broker]

WAIT_S = 20.0


def labels(queue: str, first: int, count: int) -> list[Outgoing]:
    return [
        Outgoing(queue, LabelMessage(id=f"1700000000.{n:06d}", body=float(n)).to_bytes(), f"1700000000.{n:06d}")
        for n in range(first, first + count)
    ]


async def consumer_count(connection: aio_pika.abc.AbstractRobustConnection, queue: str) -> int:
    async with connection.channel() as channel:
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.consumer_count
        assert count is not None
        return count


def test_consuming_goes_on_after_its_channel_is_closed_and_after_the_broker_cancels_it(amqp_url: str, queue_prefix: str) -> None:
    queue = f"{queue_prefix}y_true"
    handled: list[str] = []
    got_all = asyncio.Event()
    expected = 0

    async def handler(batch: list[Delivery[Any]]) -> list[Rejection]:
        handled.extend(delivery.message.id for delivery in batch)
        if len(set(handled)) >= expected:
            got_all.set()
        return []

    async def round_of(publisher: ConfirmedPublisher, first: int, count: int) -> None:
        nonlocal expected
        expected = first + count
        got_all.clear()
        await publisher.publish_many(labels(queue, first, count))
        await asyncio.wait_for(got_all.wait(), WAIT_S)

    async def scenario() -> tuple[list[int], BatchConsumer]:
        connection = await aio_pika.connect_robust(amqp_url, connection_class=CoalescingRobustConnection)
        async with connection:
            publishing = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await declare_queue(publishing, queue)
            publisher = ConfirmedPublisher(publishing, timeout_s=5)
            consumer = BatchConsumer(handler)
            consumer.subscribe(queue, LabelMessage)
            consumer_channel: list[aio_pika.abc.AbstractRobustChannel] = []

            async def open_channel() -> aio_pika.abc.AbstractRobustChannel:
                channel = await connection.channel()
                consumer_channel.append(channel)
                return channel

            await consumer.start(open_channel, publisher)
            consumers = [await consumer_count(connection, queue)]
            await round_of(publisher, 0, 100)

            # A channel error (an ack of a tag never delivered) makes the broker close the
            # channel; aio-pika reopens it, and the consumer must consume on the new one.
            underlay = await consumer_channel[0].get_underlay_channel()
            await underlay.basic_ack(999_999, wait=False)
            await round_of(publisher, 100, 100)
            consumers.append(await consumer_count(connection, queue))

            # The queue deleted under the consumer: the broker cancels it. Its publisher and
            # the consumer's robust channel declare it again; the consumer consumes it again.
            async with connection.channel() as other:
                await other.queue_delete(queue)
            await asyncio.sleep(0.2)
            await declare_queue(publishing, queue)
            await round_of(publisher, 200, 100)
            consumers.append(await consumer_count(connection, queue))
            await consumer.stop()
            return consumers, consumer

    consumers, consumer = asyncio.run(scenario())
    assert sorted(set(handled)) == [f"1700000000.{n:06d}" for n in range(300)]
    assert consumers == [1, 1, 1], "one consumer on the queue each time, never none or two"
    assert consumer.dead_lettered == 0


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "a task per delivery"])
def test_deliveries_taken_inline_or_in_tasks_reach_the_handler_and_the_dlq_alike(
    amqp_url: str, queue_prefix: str, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    """With fastpath's inline deliveries, aiormq's reader hands each delivery to the consumer
    without a task; without them (an aiormq they were not written for), aiormq's own way, a task
    each. Both take every good message and dead-letter every bad one."""
    if not inline:
        monkeypatch.setattr(gate, "usable", lambda part: part is not gate.INLINE_DELIVERIES)
    tasks = 0  # the tasks aiormq's channels ran while the messages were consumed
    counting = False
    real_create_task = aiormq.channel.Channel.create_task

    def counting_tasks(self: aiormq.channel.Channel, coro: Any) -> Any:
        nonlocal tasks
        tasks += counting
        return real_create_task(self, coro)

    monkeypatch.setattr(aiormq.channel.Channel, "create_task", counting_tasks)

    queue = f"{queue_prefix}y_true"
    handled: list[str] = []
    good = labels(queue, 0, 300)
    bad = [Outgoing(queue, b"not json", f"bad{n}") for n in range(3)]

    async def scenario() -> tuple[int, int]:
        nonlocal counting
        connection = await aio_pika.connect_robust(amqp_url, connection_class=CoalescingRobustConnection)
        async with connection:
            publishing = await connection.channel(publisher_confirms=True)
            await declare_queue(publishing, queue)
            publisher = ConfirmedPublisher(publishing, timeout_s=5)

            everything = asyncio.Event()

            def look() -> None:
                if len(handled) >= len(good) and consumer.dead_lettered >= len(bad):
                    everything.set()

            async def handler(batch: list[Delivery[Any]]) -> list[Rejection]:
                handled.extend(delivery.message.id for delivery in batch)
                look()
                return []

            async def dead_lettered(_count: int) -> None:
                look()

            consumer = BatchConsumer(handler, on_dead_lettered=dead_lettered)
            consumer.subscribe(queue, LabelMessage)
            await consumer.start(connection.channel, publisher)
            counting = True
            await publisher.publish_many(good[:150] + bad + good[150:])
            with contextlib.suppress(TimeoutError):  # the assertions say what is missing
                await asyncio.wait_for(everything.wait(), WAIT_S)
            counting = False
            await consumer.stop()
            async with connection.channel() as channel:
                dlq = await channel.declare_queue(dlq_name(queue), passive=True)
                in_dlq = dlq.declaration_result.message_count or 0
            return consumer.dead_lettered, in_dlq

    dead_lettered, in_dlq = asyncio.run(scenario())
    assert sorted(handled) == sorted(message.sample_id for message in good)
    assert (dead_lettered, in_dlq) == (3, 3)
    assert tasks == (0 if inline else len(good) + len(bad))
