"""QueueConsumer.settle: one ``multiple`` ack per channel, and never over a delivery it must not ack.

Pure unit tests with in-memory stand-ins for the channel and deliveries; the same paths run
against the real broker in tests/integration and tests/faults.
"""

import asyncio
from typing import Any

from services.common.broker import QueueConsumer
from services.common.messages import FeaturesMessage

GOOD = FeaturesMessage(id="1700000000.000001", body=[0.0] * 10, ts=1700000000.0).to_bytes()


class FakeChannel:
    def __init__(self) -> None:
        self.is_closed = False
        self.multiple_acks: list[int] = []

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        assert multiple
        self.multiple_acks.append(delivery_tag)


class FakeDelivery:
    def __init__(self, channel: FakeChannel, tag: int, body: bytes = GOOD) -> None:
        self.channel = channel
        self.delivery_tag = tag
        self.body = body
        self.redelivered = False
        self.message_id = f"m{tag}"
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append(f"nack(requeue={requeue})")


class HeldPublisher:
    """A dead-letter publisher whose confirm has not come back yet."""

    def __init__(self) -> None:
        self.confirmed = asyncio.Event()
        self.published: list[str] = []

    async def publish(self, queue: str, body: bytes, **_: Any) -> None:
        self.published.append(queue)
        await self.confirmed.wait()


def consumer_with(publisher: Any) -> tuple[QueueConsumer[FeaturesMessage], list[FakeDelivery]]:
    handled: list[FakeDelivery] = []

    async def handler(_message: FeaturesMessage, delivery: Any) -> None:
        handled.append(delivery)

    return QueueConsumer("features", FeaturesMessage, handler, publisher), handled


def test_a_batch_in_delivery_order_is_acked_with_one_multiple_ack() -> None:
    async def scenario() -> tuple[FakeChannel, list[FakeDelivery]]:
        consumer, handled = consumer_with(HeldPublisher())
        channel = FakeChannel()
        for tag in range(1, 6):
            await consumer._on_delivery(FakeDelivery(channel, tag))  # type: ignore[arg-type]
        await consumer.settle(handled[:3])  # type: ignore[arg-type]
        await consumer.settle(handled[3:])  # type: ignore[arg-type]
        return channel, handled

    channel, handled = asyncio.run(scenario())
    assert channel.multiple_acks == [3, 5]
    assert all(delivery.settled == [] for delivery in handled)  # no single acks on top


def test_a_delivery_still_being_dead_lettered_is_never_covered_by_a_multiple_ack() -> None:
    async def scenario() -> tuple[FakeChannel, list[FakeDelivery], FakeDelivery, HeldPublisher]:
        publisher = HeldPublisher()
        consumer, handled = consumer_with(publisher)
        channel = FakeChannel()
        poison = FakeDelivery(channel, 2, body=b"not json")
        deliveries = [FakeDelivery(channel, 1), poison, FakeDelivery(channel, 3), FakeDelivery(channel, 4)]
        dead_lettering = asyncio.create_task(consumer._on_delivery(deliveries[1]))  # type: ignore[arg-type]
        for delivery in (deliveries[0], deliveries[2], deliveries[3]):
            await consumer._on_delivery(delivery)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert publisher.published == ["features.dlq"]  # its copy is not confirmed yet
        await consumer.settle(handled)  # type: ignore[arg-type]
        settled_before_confirm = list(poison.settled)
        publisher.confirmed.set()
        await dead_lettering
        return channel, handled, poison, settled_before_confirm  # type: ignore[return-value]

    channel, handled, poison, settled_before_confirm = asyncio.run(scenario())
    assert channel.multiple_acks == []
    assert [delivery.settled for delivery in handled] == [["ack"], ["ack"], ["ack"]]
    assert settled_before_confirm == []  # not acked before its dead-letter copy was confirmed
    assert poison.settled == ["ack"]


def test_a_later_batch_uses_a_multiple_ack_again_once_the_gap_is_settled() -> None:
    async def scenario() -> FakeChannel:
        publisher = HeldPublisher()
        publisher.confirmed.set()
        consumer, handled = consumer_with(publisher)
        channel = FakeChannel()
        await consumer._on_delivery(FakeDelivery(channel, 1, body=b"{}"))  # type: ignore[arg-type]
        for tag in range(2, 5):
            await consumer._on_delivery(FakeDelivery(channel, tag))  # type: ignore[arg-type]
        await consumer.settle(handled)  # type: ignore[arg-type]
        return channel

    # tag 1 was dead-lettered and acked on its own; 2..4 are everything left up to 4
    assert asyncio.run(scenario()).multiple_acks == [4]


def test_requeue_nacks_each_delivery() -> None:
    async def scenario() -> tuple[FakeChannel, list[FakeDelivery]]:
        consumer, handled = consumer_with(HeldPublisher())
        channel = FakeChannel()
        for tag in range(1, 4):
            await consumer._on_delivery(FakeDelivery(channel, tag))  # type: ignore[arg-type]
        await consumer.settle(handled, requeue=True)  # type: ignore[arg-type]
        return channel, handled

    channel, handled = asyncio.run(scenario())
    assert channel.multiple_acks == []
    assert [delivery.settled for delivery in handled] == [["nack(requeue=True)"]] * 3


def test_deliveries_from_two_channels_get_one_multiple_ack_each() -> None:
    """After a reconnect a batch can hold deliveries of the old and the new channel."""

    async def scenario() -> tuple[FakeChannel, FakeChannel]:
        consumer, handled = consumer_with(HeldPublisher())
        old, new = FakeChannel(), FakeChannel()
        for channel, tags in ((old, range(7, 10)), (new, range(1, 3))):
            for tag in tags:
                await consumer._on_delivery(FakeDelivery(channel, tag))  # type: ignore[arg-type]
        await consumer.settle(handled)  # type: ignore[arg-type]
        return old, new

    old, new = asyncio.run(scenario())
    assert (old.multiple_acks, new.multiple_acks) == ([9], [2])
