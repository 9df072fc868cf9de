"""Subscription: a queue consumed again whenever the broker side lets go of it, one consumer at a time.

In-memory channels and a clock that never waits; tests/integration/test_consuming.py does the same
on the real broker (a channel closed by the broker, a queue deleted under its consumer).
"""

import asyncio
from typing import Any

from aiormq.exceptions import ChannelNotFoundEntity

from services.common.amqp.subscription import CANCELLED_RETRY_S, Subscription
from tests.unit.common.amqp.fakes import FakeClock, FakeRobustChannel


class Taker:
    def inline(self, message: Any) -> None: ...

    async def __call__(self, message: Any) -> None: ...


async def consuming(channel: FakeRobustChannel, clock: FakeClock | None = None) -> Subscription:
    subscription = Subscription("q", Taker(), clock or FakeClock())
    subscription.attach(channel)  # type: ignore[arg-type]  # a stand-in robust channel
    await subscription.consume()
    return subscription


def test_after_a_reopen_it_consumes_on_the_new_channel() -> None:
    async def scenario() -> tuple[Any, Any, bool]:
        channel = FakeRobustChannel()
        subscription = await consuming(channel)
        old = channel.underlay
        new = await channel.reopen()
        await subscription.consume()  # a resume meanwhile: already consuming there, not twice
        return old, new, subscription.consuming

    old, new, consuming_now = asyncio.run(scenario())
    assert (old.consumed, new.consumed, len(new.consumers)) == (["q"], ["q"], 1) and consuming_now


def test_a_consumer_the_broker_cancels_is_consumed_again_once_its_queue_is_back() -> None:
    clock = FakeClock()

    async def scenario() -> Any:
        channel = FakeRobustChannel()
        await consuming(channel, clock)
        underlay = channel.underlay
        underlay.refuse_consume = [ChannelNotFoundEntity("no queue 'q'")] * 2  # deleted; declared again later
        await underlay.cancel_by_broker()
        await underlay.consuming(2)
        return underlay

    underlay = asyncio.run(scenario())
    assert clock.slept == [CANCELLED_RETRY_S] * 3 and len(underlay.consumers) == 1


def test_a_stopped_subscription_stays_stopped_through_a_cancel_and_a_reopen() -> None:
    clock = FakeClock()

    async def scenario() -> tuple[Any, Any]:
        channel = FakeRobustChannel()
        subscription = await consuming(channel, clock)
        underlay = channel.underlay
        await subscription.stop()
        new = await channel.reopen()
        await asyncio.sleep(0)
        return underlay, new

    old, new = asyncio.run(scenario())
    assert (len(old.cancelled), old.consumers, new.consumed) == (1, {}, [])


def test_a_reopen_while_consuming_again_after_a_cancel_leaves_one_consumer() -> None:
    async def scenario() -> Any:
        channel = FakeRobustChannel()
        await consuming(channel)
        await channel.underlay.cancel_by_broker()  # consuming again is under way (after a pause)
        new = await channel.reopen()  # and the channel comes back meanwhile
        for _ in range(5):
            await asyncio.sleep(0)
        return new

    new = asyncio.run(scenario())
    assert new.consumed == ["q"] and len(new.consumers) == 1
