"""BatchConsumer: the one failure rule, and acks that never cover a delivery they must not.

Pure unit tests with in-memory stand-ins for the channel, the deliveries and the dead-letter
publisher; the same paths run against the real broker in tests/integration and tests/faults.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from aiormq.exceptions import ChannelInvalidStateError
from pydantic import ValidationError

from services.common.amqp.consumer import BatchConsumer, Delivery, HandBack, Rejection, _Subscription, delivery_tag
from services.common.amqp.publisher import Outgoing
from services.common.messages import MAX_MESSAGE_BYTES, SCHEMA_CONTEXT, FeaturesMessage
from services.common.schema import DIABETES


def features(n: int) -> bytes:
    return FeaturesMessage(id=f"1700000000.{n:06d}", body=[0.0] * 10, ts=1700000000.0).to_bytes()


class FakeChannel:
    """An aiormq channel as the consumer settles on it: acks (single or multiple) and nacks by tag."""

    def __init__(self) -> None:
        self.is_closed = False
        self.multiple_acks: list[int] = []
        self.deliveries: dict[int, FakeDelivery] = {}

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        assert not wait, "an ack need not wait for its frame to be written: a lost one means a redelivery"
        if multiple:
            self.multiple_acks.append(delivery_tag)
        else:
            self.deliveries[delivery_tag].settled.append("ack")

    async def basic_nack(self, delivery_tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True) -> None:
        assert not multiple and not wait
        self.deliveries[delivery_tag].settled.append(f"nack(requeue={requeue})")


class FakeDelivery:
    """An aiormq DeliveredMessage: the delivery's tag and flag, the header's message_id, the body, its channel."""

    def __init__(self, channel: FakeChannel, tag: int, body: bytes | None = None, redelivered: bool = False) -> None:
        self.channel = channel
        channel.deliveries[tag] = self
        self.delivery_tag = tag
        self.body = features(tag) if body is None else body
        self.redelivered = redelivered
        self.header = SimpleNamespace(properties=SimpleNamespace(message_id=f"m{tag}"))
        self.settled: list[str] = []


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

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        self.published.extend(messages)
        await self.confirmed.wait()

    def reasons(self) -> dict[str, str]:
        return {m.message_id: (m.headers or {})["x-dlq-reason"] for m in self.published}


Handler = Callable[[list[Delivery[Any]]], Awaitable[Sequence[Rejection]]]


async def accept_all(_batch: list[Delivery[Any]]) -> list[Rejection]:
    return []


class Harness:
    """A consumer of queue ``features`` wired to in-memory stand-ins (no broker, no worker task)."""

    def __init__(
        self,
        handler: Handler = accept_all,
        recover: Callable[[], Awaitable[None]] | None = None,
        invalid: Callable[[ValidationError | None], None] | None = None,
    ) -> None:
        self.recovered = asyncio.Event()

        async def default_recover() -> None:
            await self.recovered.wait()

        self.consumer = BatchConsumer(handler, recover=recover or default_recover, invalid=invalid)
        self.subscription = _Subscription("features", FeaturesMessage, lambda: {SCHEMA_CONTEXT: DIABETES})
        self.dead_letters = DeadLetters()
        self.consumer._dead_letters = self.dead_letters  # a recording stand-in publisher (a Publisher)
        self.channel = FakeChannel()

    async def deliver(self, *deliveries: FakeDelivery) -> list[Delivery[Any]]:
        """Deliver, as the broker would; return what reached the inbox (validated)."""
        for raw in deliveries:
            await self.consumer._on_delivery(raw, self.subscription)  # type: ignore[arg-type]  # a stand-in delivery
        taken = []
        while not self.consumer._inbox.empty():
            taken.append(self.consumer._inbox.get_nowait())
        return taken


def test_a_batch_in_delivery_order_is_acked_with_one_multiple_ack() -> None:
    async def scenario() -> tuple[FakeChannel, list[FakeDelivery]]:
        h = Harness()
        raws = [FakeDelivery(h.channel, tag) for tag in range(1, 6)]
        batch = await h.deliver(*raws)
        await h.consumer._handle(batch[:3])
        await h.consumer._handle(batch[3:])
        return h.channel, raws

    channel, raws = asyncio.run(scenario())
    assert channel.multiple_acks == [3, 5]
    assert all(raw.settled == [] for raw in raws)  # no single acks on top


def test_a_message_that_fails_validation_is_dead_lettered_with_the_reason_and_never_handled() -> None:
    handled: list[str] = []

    async def handler(batch: list[Delivery[Any]]) -> list[Rejection]:
        handled.extend(d.message.id for d in batch)
        return []

    async def scenario() -> tuple[Harness, FakeDelivery, list[Delivery[Any]]]:
        h = Harness(handler)
        bad = FakeDelivery(h.channel, 1, body=b'{"id": "x", "body": [1, 2]}')
        taken = await h.deliver(bad, FakeDelivery(h.channel, 2))
        return h, bad, taken

    h, bad, taken = asyncio.run(scenario())
    assert [d.message.id for d in taken] == ["1700000000.000002"]
    assert [m.queue for m in h.dead_letters.published] == ["features.dlq"]
    assert "body" in h.dead_letters.reasons()["m1"] and "10" in h.dead_letters.reasons()["m1"]
    assert bad.settled == ["ack"]  # acked once its DLQ copy was confirmed
    assert handled == []


def test_the_service_is_told_of_each_message_refused_before_its_handler() -> None:
    told: list[str] = []

    def invalid(error: ValidationError | None) -> None:
        told.append("too large" if error is None else error.errors()[0]["type"])

    async def scenario() -> None:
        h = Harness(invalid=invalid)
        await h.deliver(
            FakeDelivery(h.channel, 1, body=b'{"id": "1.5", "body": [1, 2]}'),
            FakeDelivery(h.channel, 2),
            FakeDelivery(h.channel, 3, body=b"{" + b" " * MAX_MESSAGE_BYTES + b"}"),
        )

    asyncio.run(scenario())
    assert told == ["feature_feature_count", "too large"]


def test_a_failing_hook_does_not_keep_a_bad_message_from_its_dlq() -> None:
    def invalid(_error: ValidationError | None) -> None:
        raise RuntimeError("a bug in the service's counting")

    async def scenario() -> tuple[Harness, FakeDelivery]:
        h = Harness(invalid=invalid)
        bad = FakeDelivery(h.channel, 1, body=b'{"id": "1.5", "body": [1, 2]}')
        await h.deliver(bad)
        return h, bad

    h, bad = asyncio.run(scenario())
    assert [m.queue for m in h.dead_letters.published] == ["features.dlq"] and bad.settled == ["ack"]


def test_a_delivery_still_being_dead_lettered_is_never_covered_by_a_multiple_ack() -> None:
    async def scenario() -> tuple[FakeChannel, list[FakeDelivery], FakeDelivery, list[str]]:
        h = Harness()
        h.dead_letters.hold()
        poison = FakeDelivery(h.channel, 2, body=b"not json")
        good = [FakeDelivery(h.channel, tag) for tag in (1, 3, 4)]
        dead_lettering = asyncio.create_task(h.consumer._on_delivery(poison, h.subscription))  # type: ignore[arg-type]  # a stand-in delivery
        batch = await h.deliver(*good)
        await asyncio.sleep(0)
        assert [m.queue for m in h.dead_letters.published] == ["features.dlq"]  # its copy is not confirmed yet
        await h.consumer._handle(batch)
        settled_before_confirm = list(poison.settled)
        h.dead_letters.release()
        await dead_lettering
        return h.channel, good, poison, settled_before_confirm

    channel, good, poison, settled_before_confirm = asyncio.run(scenario())
    assert channel.multiple_acks == []
    assert [raw.settled for raw in good] == [["ack"], ["ack"], ["ack"]]
    assert settled_before_confirm == []  # not acked before its dead-letter copy was confirmed
    assert poison.settled == ["ack"]


def test_a_later_batch_uses_a_multiple_ack_again_once_the_gap_is_settled() -> None:
    async def scenario() -> FakeChannel:
        h = Harness()
        await h.deliver(FakeDelivery(h.channel, 1, body=b"{}"))
        batch = await h.deliver(*(FakeDelivery(h.channel, tag) for tag in range(2, 5)))
        await h.consumer._handle(batch)
        return h.channel

    # tag 1 was dead-lettered and acked on its own; 2..4 are everything left up to 4
    assert asyncio.run(scenario()).multiple_acks == [4]


def test_deliveries_from_two_channels_get_one_multiple_ack_each() -> None:
    """After a reconnect a batch can hold deliveries of the old and the new channel."""

    async def scenario() -> tuple[FakeChannel, FakeChannel]:
        h = Harness()
        old, new = FakeChannel(), FakeChannel()
        batch = await h.deliver(*(FakeDelivery(old, tag) for tag in range(7, 10)), *(FakeDelivery(new, tag) for tag in (1, 2)))
        await h.consumer._handle(batch)
        return old, new

    old, new = asyncio.run(scenario())
    assert (old.multiple_acks, new.multiple_acks) == ([9], [2])


def test_what_the_handler_refuses_is_dead_lettered_with_its_reason_and_the_rest_acked() -> None:
    async def handler(batch: list[Delivery[Any]]) -> list[Rejection]:
        return [(d, f"refused {d.message.id}") for d in batch if d.raw.delivery_tag == 2]

    async def scenario() -> tuple[Harness, list[FakeDelivery]]:
        h = Harness(handler)
        raws = [FakeDelivery(h.channel, tag) for tag in (1, 2, 3)]
        await h.consumer._handle(await h.deliver(*raws))
        return h, raws

    h, raws = asyncio.run(scenario())
    assert h.dead_letters.reasons() == {"m2": "refused 1700000000.000002"}
    assert [m.headers and m.headers["x-original-queue"] for m in h.dead_letters.published] == ["features"]
    assert [raw.settled for raw in raws] == [["ack"], ["ack"], ["ack"]]  # 2 acked after its DLQ copy; no multiple ack over it
    assert h.consumer.dead_lettered == 1


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

    async def scenario() -> tuple[Harness, list[FakeDelivery]]:
        h = Harness(poisoned_handler(3, calls))
        raws = [FakeDelivery(h.channel, tag) for tag in range(1, 6)]
        await h.consumer._handle(await h.deliver(*raws))
        return h, raws

    h, raws = asyncio.run(scenario())
    assert calls == [[1, 2, 3, 4, 5], [1], [2], [3], [4], [5]]
    assert [raw.settled for raw in raws] == [["ack"], ["ack"], ["nack(requeue=True)"], ["ack"], ["ack"]]
    assert h.dead_letters.published == []


def test_a_message_that_fails_again_on_its_redelivery_is_dead_lettered_with_the_error_not_looped() -> None:
    calls: list[list[int]] = []

    async def scenario() -> tuple[Harness, list[FakeDelivery]]:
        h = Harness(poisoned_handler(3, calls))
        raws = [FakeDelivery(h.channel, 3, redelivered=True), FakeDelivery(h.channel, 4)]
        await h.consumer._handle(await h.deliver(*raws))
        return h, raws

    h, raws = asyncio.run(scenario())
    assert h.dead_letters.reasons() == {"m3": "handling failed twice: ValueError: cannot handle 3"}
    assert [raw.settled for raw in raws] == [["ack"], ["ack"]]


def test_hand_back_requeues_the_batch_pauses_and_resumes_after_recovery() -> None:
    failing = True

    async def handler(_batch: list[Delivery[Any]]) -> list[Rejection]:
        if failing:
            raise HandBack("cannot write to logs: disk full")
        return []

    async def scenario() -> tuple[Harness, list[FakeDelivery], list[str | None], list[FakeDelivery]]:
        nonlocal failing
        h = Harness(handler)
        resumed: list[str] = []

        async def resume() -> None:
            resumed.append("resume")

        h.consumer.resume = resume  # type: ignore[method-assign]  # to see when it resumes
        raws = [FakeDelivery(h.channel, tag) for tag in (1, 2)]
        await h.consumer._handle(await h.deliver(*raws))
        states = [h.consumer.handed_back]
        later = [FakeDelivery(h.channel, 3)]  # taken into the inbox before the pause took effect
        h.consumer._worker = asyncio.create_task(h.consumer._work())
        for raw in later:
            await h.consumer._on_delivery(raw, h.subscription)  # type: ignore[arg-type]  # a stand-in delivery
        await asyncio.sleep(0.05)
        failing = False
        h.recovered.set()
        await asyncio.sleep(0.05)
        states.append(h.consumer.handed_back)
        states.append(str(resumed))
        h.consumer._worker.cancel()
        await asyncio.gather(h.consumer._worker, return_exceptions=True)
        return h, raws, states, later

    h, raws, states, later = asyncio.run(scenario())
    assert states[0] == "cannot write to logs: disk full"
    assert [raw.settled for raw in raws] == [["nack(requeue=True)"]] * 2  # back to the queue, not judged
    assert [raw.settled for raw in later] == [["nack(requeue=True)"]]
    assert states[1] is None and states[2] == "['resume']"
    assert h.dead_letters.published == []


@pytest.mark.parametrize("size", [1, 3])
def test_next_batch_takes_what_is_waiting_up_to_the_size(size: int) -> None:
    from services.common.amqp.consumer import next_batch

    async def scenario() -> list[int]:
        inbox: asyncio.Queue[int] = asyncio.Queue()
        for n in range(5):
            inbox.put_nowait(n)
        return await next_batch(inbox, max_size=size, window_s=0.001)

    assert asyncio.run(scenario()) == list(range(size))


def test_resuming_after_a_hand_back_outlasts_a_broker_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker went away while the disk was being fixed: consuming again must wait for its
    channel, not die with the ChannelInvalidStateError (the consumer then never consumed again)."""
    monkeypatch.setattr("services.common.amqp.consumer.RESUME_RETRY_S", 0.01, raising=False)

    async def scenario() -> list[str]:
        h = Harness()
        attempts: list[str] = []

        async def resume() -> None:
            attempts.append("resume")
            if len(attempts) < 3:
                raise ChannelInvalidStateError("<Channel: 1> closed")

        h.consumer.resume = resume  # type: ignore[method-assign]  # a channel closed twice, then back
        h.recovered.set()
        await h.consumer._recover_then_resume()
        return attempts

    assert asyncio.run(scenario()) == ["resume"] * 3


def test_every_dead_lettered_message_is_told_to_the_service() -> None:
    told: list[int] = []

    async def handler(batch: list[Delivery[Any]]) -> list[Rejection]:
        return [(batch[0], "refused by the handler")]

    async def scenario() -> None:
        h = Harness(handler)
        h.consumer._on_dead_lettered = told.append
        batch = await h.deliver(
            FakeDelivery(h.channel, 1, body=b"not json"), FakeDelivery(h.channel, 2), FakeDelivery(h.channel, 3)
        )
        await h.consumer._handle(batch)

    asyncio.run(scenario())
    assert told == [1, 1] and sum(told) == 2
