"""In-memory stand-ins for the broker side of a consumer: robust channels, their aiormq channels
(consume, cancel, ack, nack, deliver), a dead-letter publisher, and a clock that never waits."""

import asyncio
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from pamqp.commands import Basic

from services.common.amqp.outgoing import Outgoing
from services.common.amqp.publisher import Confirmed
from services.common.messages import FeaturesMessage

WAIT_S = 5.0  # a guard against a hang, never a duration a test relies on


def features(n: int) -> bytes:
    return FeaturesMessage(id=f"1700000000.{n:06d}", body=[0.0] * 10, ts=1700000000.0).to_bytes()


class FakeClock:
    """Time that passes only when the code sleeps (and then at once)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class FakeDelivery:
    """An aiormq DeliveredMessage: its tag and redelivered flag, the header's message_id, the body, its channel."""

    def __init__(self, channel: "FakeChannel", tag: int, body: bytes, redelivered: bool) -> None:
        self.channel = channel
        self.delivery_tag = tag
        self.body = body
        self.redelivered = redelivered
        self.header = SimpleNamespace(properties=SimpleNamespace(message_id=f"m{tag}/1"))
        self.settled: list[str] = []  # what the broker was told of it: "ack", "nack(requeue=True)"...


class FakeChannel:
    """An aiormq channel as a consumer uses it, with the broker's side of acks: a ``multiple`` ack
    settles every unsettled delivery of the channel up to its tag."""

    def __init__(self) -> None:
        self.is_closed = False
        self.consumers: dict[str, Any] = {}
        self.on_consumer_cancel_callbacks: set[Callable[[Basic.Cancel], Any]] = set()
        self.consumed: list[str] = []  # the queues of each basic_consume
        self.cancelled: list[str] = []  # the tags of each basic_cancel
        self.frames: list[tuple[str, int, bool]] = []  # ("ack" | "nack", tag, multiple)
        self.deliveries: dict[int, FakeDelivery] = {}
        self.refuse_consume: list[Exception] = []  # raised by the next basic_consume calls, in turn
        self.last_callback: Any = None  # the last consumer's, cancelled or not
        self.changed = asyncio.Event()

    async def basic_consume(self, queue: str, callback: Any, *, consumer_tag: str) -> Basic.ConsumeOk:
        if self.refuse_consume:
            raise self.refuse_consume.pop(0)
        self.consumers[consumer_tag] = self.last_callback = callback
        self.consumed.append(queue)
        self._changed()
        return Basic.ConsumeOk(consumer_tag)

    async def basic_cancel(self, consumer_tag: str) -> None:
        self.consumers.pop(consumer_tag, None)
        self.cancelled.append(consumer_tag)

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        assert not wait, "an ack need not wait for its frame to be written: a lost one means a redelivery"
        self.frames.append(("ack", delivery_tag, multiple))
        for tag, delivery in self.deliveries.items():
            if not delivery.settled and (tag == delivery_tag or (multiple and tag < delivery_tag)):
                delivery.settled.append("ack")
        self._changed()

    async def basic_nack(self, delivery_tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True) -> None:
        assert not multiple and not wait
        self.frames.append(("nack", delivery_tag, False))
        self.deliveries[delivery_tag].settled.append(f"nack(requeue={requeue})")
        self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def deliver(
        self, body: bytes, *, tag: int | None = None, redelivered: bool = False, in_flight: bool = False
    ) -> FakeDelivery:
        """The broker delivers ``body`` to the channel's consumer, as aiormq hands it over (``in_flight``:
        to the last consumer even if it was cancelled meanwhile, as a delivery already on its way)."""
        tag = tag if tag is not None else max(self.deliveries, default=0) + 1
        raw = self.deliveries[tag] = FakeDelivery(self, tag, body, redelivered)
        if in_flight:
            await self.last_callback(raw)
        else:
            (callback,) = self.consumers.values()
            await callback(raw)
        return raw

    async def consuming(self, times: int) -> None:
        """Wait until a consumer was started on this channel ``times`` times in all."""
        while len(self.consumed) < times:
            await asyncio.wait_for(self.changed.wait(), WAIT_S)

    async def cancel_by_broker(self) -> None:
        """The broker cancels the consumer (its queue was deleted)."""
        (tag,) = self.consumers
        del self.consumers[tag]
        for callback in list(self.on_consumer_cancel_callbacks):
            callback(Basic.Cancel(consumer_tag=tag))


class FakeRobustChannel:
    """aio-pika's robust channel: its current aiormq channel, reopened on demand (a reconnect)."""

    def __init__(self) -> None:
        self.underlay = FakeChannel()
        self._reopened: list[Callable[[Any], Any]] = []
        self.reopen_callbacks = SimpleNamespace(add=self._reopened.append)
        self.declared: list[str] = []

    async def get_underlay_channel(self) -> FakeChannel:
        return self.underlay

    async def declare_queue(self, name: str, **_: Any) -> None:
        self.declared.append(name)

    async def reopen(self) -> FakeChannel:
        """The old aiormq channel closed (the broker requeues what it held); a new one in its place."""
        self.underlay.is_closed = True
        self.underlay = FakeChannel()
        for callback in self._reopened:
            await callback(self)
        return self.underlay


class Channels:
    """The robust channels a consumer opened, in order (one per queue)."""

    def __init__(self) -> None:
        self.opened: list[FakeRobustChannel] = []

    async def open(self) -> FakeRobustChannel:
        channel = FakeRobustChannel()
        self.opened.append(channel)
        return channel


class DeadLetters:
    """A dead-letter publisher; ``hold()`` keeps its confirms back until ``release()``."""

    def __init__(self) -> None:
        self.confirmed = asyncio.Event()
        self.confirmed.set()
        self.published: list[Outgoing] = []

    def hold(self) -> None:
        self.confirmed.clear()

    def release(self) -> None:
        self.confirmed.set()

    async def publish_many(self, messages: Sequence[Outgoing], confirmed: Confirmed | None = None) -> None:
        self.published.extend(messages)
        await self.confirmed.wait()
        if confirmed is not None:
            confirmed(messages)

    def reasons(self) -> dict[str, str]:
        return {m.sample_id: (m.headers or {})["x-dlq-reason"] for m in self.published}


async def settled(*deliveries: FakeDelivery) -> None:
    """Wait until the broker was told of each delivery."""

    async def one(delivery: FakeDelivery) -> None:
        while not delivery.settled:
            await delivery.channel.changed.wait()

    await asyncio.wait_for(asyncio.gather(*(one(d) for d in deliveries)), WAIT_S)
