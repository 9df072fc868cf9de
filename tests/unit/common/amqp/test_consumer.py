"""BatchConsumer through what the broker sees: consumes and cancels, acks and nacks, DLQ copies.

Started as a service starts it, on in-memory channels (tests/unit/common/amqp/fakes.py) that
deliver as aiormq does; a clock that never waits. The same paths run against the real broker in
tests/integration and tests/faults.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiormq.exceptions import ChannelInvalidStateError
from pydantic import ValidationError

from services.common.amqp.consumer import BatchConsumer, Delivery, HandBack, Rejection
from services.common.amqp.delivery import delivery_tag
from services.common.messages import MAX_MESSAGE_BYTES, SCHEMA_CONTEXT, FeaturesMessage
from services.common.schema import DIABETES
from tests.unit.common.amqp.fakes import Channels, DeadLetters, FakeChannel, FakeClock, features, settled

Handler = Callable[[list[Delivery[Any]]], Awaitable[Sequence[Rejection]]]


async def accept_all(_batch: list[Delivery[Any]]) -> list[Rejection]:
    return []


class Running:
    """A BatchConsumer of ``queues``, started on in-memory channels with a dead-letter recorder."""

    def __init__(self, handler: Handler = accept_all, queues: Sequence[str] = ("features",), **options: Any) -> None:
        self.clock = FakeClock()
        self.consumer = BatchConsumer(handler, clock=self.clock, **options)
        for queue in queues:
            self.consumer.subscribe(queue, FeaturesMessage, lambda: {SCHEMA_CONTEXT: DIABETES})
        self.channels = Channels()
        self.dead_letters = DeadLetters()

    async def __aenter__(self) -> "Running":
        await self.consumer.start(self.channels.open, self.dead_letters, "quorum")  # type: ignore[arg-type]  # stand-in channels
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.consumer.stop()

    @property
    def channel(self) -> FakeChannel:
        """The aiormq channel the first queue is consumed on now."""
        return self.channels.opened[0].underlay


def test_a_batch_in_delivery_order_is_acked_with_one_multiple_ack() -> None:
    async def scenario() -> FakeChannel:
        async with Running(batch_max=3) as running:
            raws = [await running.channel.deliver(features(n)) for n in range(1, 6)]
            await settled(*raws)
            assert all(raw.settled == ["ack"] for raw in raws)
            return running.channel

    assert asyncio.run(scenario()).frames == [("ack", 3, True), ("ack", 5, True)]


def test_a_message_that_fails_validation_is_dead_lettered_with_the_reason_and_never_handled() -> None:
    handled: list[str] = []

    async def handler(batch: list[Delivery[Any]]) -> list[Rejection]:
        handled.extend(d.message.id for d in batch)
        return []

    async def scenario() -> DeadLetters:
        async with Running(handler) as running:
            bad = await running.channel.deliver(b'{"id": "x", "body": [1, 2]}')
            good = await running.channel.deliver(features(2))
            await settled(bad, good)
            assert bad.settled == ["ack"]  # acked once its DLQ copy was confirmed
            return running.dead_letters

    dead_letters = asyncio.run(scenario())
    assert handled == ["1700000000.000002"]
    assert [m.queue for m in dead_letters.published] == ["features.dlq"]
    reason = dead_letters.reasons()["m1/1"]  # unparsed: under the message_id it came with
    assert "body" in reason and "10" in reason


def test_the_service_is_told_of_each_message_refused_before_its_handler() -> None:
    told: list[str] = []

    def invalid(error: ValidationError | None) -> None:
        told.append("too large" if error is None else error.errors()[0]["type"])

    async def scenario() -> None:
        async with Running(invalid=invalid) as running:
            raws = [
                await running.channel.deliver(b'{"id": "1.5", "body": [1, 2]}'),
                await running.channel.deliver(features(2)),
                await running.channel.deliver(b"{" + b" " * MAX_MESSAGE_BYTES + b"}"),
            ]
            await settled(*raws)

    asyncio.run(scenario())
    assert told == ["feature_feature_count", "too large"]


def test_a_failing_hook_does_not_keep_a_bad_message_from_its_dlq() -> None:
    def invalid(_error: ValidationError | None) -> None:
        raise RuntimeError("a bug in the service's counting")

    async def scenario() -> tuple[DeadLetters, list[str]]:
        async with Running(invalid=invalid) as running:
            bad = await running.channel.deliver(b'{"id": "1.5", "body": [1, 2]}')
            await settled(bad)
            return running.dead_letters, bad.settled

    dead_letters, bad_settled = asyncio.run(scenario())
    assert [m.queue for m in dead_letters.published] == ["features.dlq"] and bad_settled == ["ack"]


def test_a_delivery_still_being_dead_lettered_is_never_covered_by_a_multiple_ack() -> None:
    async def scenario() -> tuple[FakeChannel, list[str]]:
        async with Running() as running:
            running.dead_letters.hold()
            channel = running.channel
            first = await channel.deliver(features(1))
            poison = await channel.deliver(b"not json")
            rest = [await channel.deliver(features(n)) for n in (3, 4)]
            await settled(first, *rest)
            settled_before_confirm = list(poison.settled)
            running.dead_letters.release()
            await settled(poison)
            return channel, settled_before_confirm

    channel, settled_before_confirm = asyncio.run(scenario())
    assert settled_before_confirm == []  # not acked before its dead-letter copy was confirmed
    assert channel.frames == [("ack", 1, False), ("ack", 3, False), ("ack", 4, False), ("ack", 2, False)]


def test_a_later_batch_uses_a_multiple_ack_again_once_the_gap_is_settled() -> None:
    async def scenario() -> FakeChannel:
        async with Running() as running:
            await settled(await running.channel.deliver(b"{}"))  # dead-lettered, acked on its own
            await settled(*[await running.channel.deliver(features(n)) for n in (2, 3, 4)])
            return running.channel

    assert asyncio.run(scenario()).frames == [("ack", 1, False), ("ack", 4, True)]


def test_a_batch_from_two_queues_gets_one_multiple_ack_on_each_queues_channel() -> None:
    async def scenario() -> tuple[FakeChannel, FakeChannel]:
        async with Running(queues=("y_true", "y_pred")) as running:
            labels, predictions = (channel.underlay for channel in running.channels.opened)
            raws = [await labels.deliver(features(n), tag=n) for n in (7, 8, 9)]
            raws += [await predictions.deliver(features(n), tag=n) for n in (1, 2)]
            await settled(*raws)
            return labels, predictions

    labels, predictions = asyncio.run(scenario())
    assert (labels.frames, predictions.frames) == ([("ack", 9, True)], [("ack", 2, True)])


def test_what_the_handler_refuses_is_dead_lettered_with_its_reason_and_the_rest_acked() -> None:
    async def handler(batch: list[Delivery[Any]]) -> list[Rejection]:
        return [(d, f"refused {d.message.id}") for d in batch if d.raw.delivery_tag == 2]

    async def scenario() -> tuple[Running, list[list[str]]]:
        async with Running(handler) as running:
            raws = [await running.channel.deliver(features(n)) for n in (1, 2, 3)]
            await settled(*raws)
            return running, [raw.settled for raw in raws]

    running, settled_as = asyncio.run(scenario())
    assert running.dead_letters.reasons() == {"1700000000.000002": "refused 1700000000.000002"}
    assert [m.headers and m.headers["x-original-queue"] for m in running.dead_letters.published] == ["features"]
    assert settled_as == [["ack"], ["ack"], ["ack"]]  # 2 acked after its DLQ copy; no multiple ack over it
    assert running.consumer.dead_lettered == 1


def poisoned_handler(poison_tag: int, calls: list[list[int]]) -> Handler:
    """A handler that fails on any batch holding ``poison_tag`` (a bug for that one message)."""

    async def handler(batch: list[Delivery[Any]]) -> list[Rejection]:
        tags = [delivery_tag(d.raw) for d in batch]
        calls.append(tags)
        if poison_tag in tags:
            raise ValueError(f"cannot handle {poison_tag}")
        return []

    return handler


def test_a_failing_batch_is_retried_one_message_at_a_time_and_the_poison_requeued_once() -> None:
    calls: list[list[int]] = []

    async def scenario() -> tuple[Running, list[list[str]]]:
        async with Running(poisoned_handler(3, calls)) as running:
            raws = [await running.channel.deliver(features(n)) for n in range(1, 6)]
            await settled(*raws)
            return running, [raw.settled for raw in raws]

    running, settled_as = asyncio.run(scenario())
    assert calls == [[1, 2, 3, 4, 5], [1], [2], [3], [4], [5]]
    assert settled_as == [["ack"], ["ack"], ["nack(requeue=True)"], ["ack"], ["ack"]]
    assert running.dead_letters.published == []


def test_a_message_that_fails_again_on_its_redelivery_is_dead_lettered_with_the_error_not_looped() -> None:
    calls: list[list[int]] = []

    async def scenario() -> tuple[Running, list[list[str]]]:
        async with Running(poisoned_handler(3, calls)) as running:
            raws = [
                await running.channel.deliver(features(3), tag=3, redelivered=True),
                await running.channel.deliver(features(4), tag=4),
            ]
            await settled(*raws)
            return running, [raw.settled for raw in raws]

    running, settled_as = asyncio.run(scenario())
    assert running.dead_letters.reasons() == {"1700000000.000003": "handling failed twice: ValueError: cannot handle 3"}
    assert settled_as == [["ack"], ["ack"]]


class Storage:
    """A handler whose disk is full until ``fix()``; the consumer's ``recover`` waits for that."""

    def __init__(self) -> None:
        self.fixed = asyncio.Event()
        self.handled: list[str] = []

    async def handler(self, batch: list[Delivery[Any]]) -> list[Rejection]:
        if not self.fixed.is_set():
            raise HandBack("cannot write to logs: disk full")
        self.handled.extend(d.message.id for d in batch)
        return []

    async def recover(self) -> None:
        await self.fixed.wait()


def test_a_hand_back_requeues_the_batch_stops_consuming_and_consumes_again_once_recovered() -> None:
    storage = Storage()

    async def scenario() -> tuple[Running, dict[str, Any]]:
        async with Running(storage.handler, recover=storage.recover) as running:
            channel = running.channel
            batch = [await channel.deliver(features(n)) for n in (1, 2)]
            await settled(*batch)
            seen: dict[str, Any] = {"handed back": running.consumer.handed_back, "consumers": len(channel.consumers)}
            late = await channel.deliver(features(3), in_flight=True)  # on its way before the cancel took effect
            await settled(late)
            storage.fixed.set()
            await channel.consuming(2)
            after = await channel.deliver(features(4))
            await settled(after)
            seen |= {"settled": [raw.settled for raw in [*batch, late, after]], "after": running.consumer.handed_back}
            seen |= {"consumed": list(channel.consumed), "cancelled": len(channel.cancelled)}
            return running, seen

    running, seen = asyncio.run(scenario())
    assert seen["handed back"] == "cannot write to logs: disk full" and seen["consumers"] == 0
    assert seen["settled"] == [["nack(requeue=True)"]] * 3 + [["ack"]]  # back to the queue, not judged; then handled
    assert storage.handled == ["1700000000.000004"] and seen["after"] is None
    assert seen["consumed"] == ["features", "features"] and seen["cancelled"] == 1  # stopped, then consumed again
    assert running.dead_letters.published == []


def test_consuming_again_after_a_hand_back_outlasts_a_broker_restart() -> None:
    """The broker went away while the disk was being fixed: consuming again must wait for its
    channel, not die with the ChannelInvalidStateError (the consumer then never consumed again)."""
    storage = Storage()

    async def scenario() -> tuple[list[float], list[str]]:
        async with Running(storage.handler, recover=storage.recover) as running:
            channel = running.channel
            await settled(await channel.deliver(features(1)))
            channel.refuse_consume = [ChannelInvalidStateError("<Channel: 1> closed")] * 2
            storage.fixed.set()
            await channel.consuming(2)
            slept = list(running.clock.slept)
            await settled(await channel.deliver(features(2)))
            return slept, storage.handled

    slept, handled = asyncio.run(scenario())
    assert slept == [1.0, 1.0]  # RESUME_RETRY_S, twice: no wall time waited
    assert handled == ["1700000000.000002"]


def test_every_dead_lettered_message_is_told_to_the_service() -> None:
    told: list[int] = []

    async def handler(batch: list[Delivery[Any]]) -> list[Rejection]:
        return [(batch[0], "refused by the handler")]

    async def tell(count: int) -> None:
        told.append(count)

    async def scenario() -> None:
        async with Running(handler, on_dead_lettered=tell) as running:
            raws = [await running.channel.deliver(body) for body in (b"not json", features(2), features(3))]
            await settled(*raws)

    asyncio.run(scenario())
    assert told == [1, 1]


def test_stop_lets_the_batch_in_hand_finish_and_settle() -> None:
    started, finish = asyncio.Event(), asyncio.Event()

    async def handler(_batch: list[Delivery[Any]]) -> list[Rejection]:
        started.set()
        await finish.wait()
        return []

    async def scenario() -> list[str]:
        running = Running(handler)
        await running.consumer.start(running.channels.open, running.dead_letters, "quorum")  # type: ignore[arg-type]  # stand-ins
        raw = await running.channel.deliver(features(1))
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.create_task(running.consumer.stop())
        await asyncio.sleep(0)
        finish.set()
        await asyncio.wait_for(stopping, 5)
        return raw.settled

    assert asyncio.run(scenario()) == ["ack"]
