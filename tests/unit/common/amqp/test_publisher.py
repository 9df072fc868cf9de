"""ConfirmedPublisher renews a channel the broker keeps refusing (the quorum-queue leader case;
tested for real on a three-node cluster in tests/cluster). Here with stand-in channels that
answer each publish with an ack or a nack, through aiormq's public publish path."""

import asyncio
from typing import Any

from aiormq.exceptions import DeliveryError
from pamqp.commands import Basic

from services.common.amqp.publisher import REFUSED_STREAK, ConfirmedPublisher, Outgoing


class StandInChannel:
    """An aiormq channel as the publisher sees it: each publish acked, or nacked while ``nacking``."""

    def __init__(self, nacking: int = 0) -> None:
        self.nacking = nacking  # publishes still to nack (-1: all of them)
        self.acked: list[str] = []
        self.rounds = 0

    async def basic_publish(self, _body: bytes, *, properties: Any, **_: Any) -> Basic.Ack:
        if self.nacking:
            self.nacking -= 1 if self.nacking > 0 else 0
            raise DeliveryError(None, Basic.Nack(delivery_tag=1))
        self.acked.append(properties.message_id.partition("/")[0])  # the sample id it carries (outgoing.py)
        return Basic.Ack(delivery_tag=1)


class StandInRobustChannel:
    def __init__(self, channel: StandInChannel) -> None:
        self.channel = channel
        self.closed = False

    async def get_underlay_channel(self) -> StandInChannel:
        self.channel.rounds += 1
        return self.channel


def messages(count: int) -> list[Outgoing]:
    return [Outgoing("q", b"{}", str(n)) for n in range(count)]


def test_a_channel_that_keeps_nacking_is_replaced_and_the_publishes_go_through_on_the_new_one() -> None:
    stuck, fresh = StandInChannel(nacking=-1), StandInChannel()
    renewed: list[Any] = []

    async def renew(old: Any) -> Any:
        renewed.append(old)
        return StandInRobustChannel(fresh)

    async def scenario() -> ConfirmedPublisher:
        # The arg-type ignore below: a stand-in for aio-pika's RobustChannel, with only what the publisher calls
        publisher = ConfirmedPublisher(StandInRobustChannel(stuck), 1.0, renew=renew)  # type: ignore[arg-type]
        await asyncio.wait_for(publisher.publish_many(messages(5)), 10)
        return publisher

    publisher = asyncio.run(scenario())
    assert stuck.rounds == REFUSED_STREAK and not stuck.acked
    assert fresh.acked == ["0", "1", "2", "3", "4"]
    assert publisher.renewals == 1 and len(renewed) == 1


def test_a_few_nacks_between_acks_do_not_renew_the_channel() -> None:
    flaky = StandInChannel(nacking=REFUSED_STREAK - 1)  # refused fewer rounds than the streak

    async def renew(_old: Any) -> Any:
        raise AssertionError("renewed a channel that recovers by itself")

    async def scenario() -> ConfirmedPublisher:
        # The arg-type ignore below: a stand-in for aio-pika's RobustChannel, with only what the publisher calls
        publisher = ConfirmedPublisher(StandInRobustChannel(flaky), 1.0, renew=renew)  # type: ignore[arg-type]
        for _ in range(3):
            await asyncio.wait_for(publisher.publish_many(messages(1)), 10)
        return publisher

    publisher = asyncio.run(scenario())
    assert publisher.renewals == 0 and flaky.acked == ["0", "0", "0"]


def test_concurrent_publishes_on_a_stuck_channel_renew_it_once() -> None:
    stuck, fresh = StandInChannel(nacking=-1), StandInChannel()
    renewals = 0

    async def renew(_old: Any) -> Any:
        nonlocal renewals
        renewals += 1
        await asyncio.sleep(0.05)  # opening a channel takes a round trip
        return StandInRobustChannel(fresh)

    async def scenario() -> None:
        # The arg-type ignore below: a stand-in for aio-pika's RobustChannel, with only what the publisher calls
        publisher = ConfirmedPublisher(StandInRobustChannel(stuck), 1.0, renew=renew)  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.gather(*(publisher.publish_many(messages(2)) for _ in range(5))), 10)

    asyncio.run(scenario())
    assert renewals == 1 and len(fresh.acked) == 10


def test_confirmed_is_told_each_rounds_confirmed_messages_before_the_rest_are_retried() -> None:
    """Publishing several callers' messages together, each caller is answered on its own messages' confirms."""
    channel = StandInChannel(nacking=2)  # the first two publishes of the first round are nacked
    rounds: list[list[str]] = []

    async def scenario() -> None:
        publisher = ConfirmedPublisher(StandInRobustChannel(channel), 1.0)  # type: ignore[arg-type]  # a stand-in, as above
        await asyncio.wait_for(
            publisher.publish_many(messages(5), lambda confirmed: rounds.append([m.sample_id for m in confirmed])), 10
        )

    asyncio.run(scenario())
    assert rounds == [["2", "3", "4"], ["0", "1"]]
