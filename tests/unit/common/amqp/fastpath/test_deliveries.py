"""fastpath.deliveries: an InlineConsumer is called at once by the channel's reader, where aiormq allows.

A stand-in channel here; tests/integration/test_consuming.py runs both ways on the real broker.
"""

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from services.common.amqp import fastpath
from services.common.amqp.fastpath import gate


class DeliveringChannel:
    """What the inline deliveries rely on in an aiormq channel: a delivery's header and body frames, its consumers."""

    def __init__(self) -> None:
        self.number = 3
        self.consumers: dict[str, Any] = {}
        self.tasks: list[asyncio.Task[Any]] = []
        self.consumed: list[tuple[str, str]] = []
        self.before_consume_ok: list[Any] = []  # deliveries the broker sends at once, before the Basic.ConsumeOk

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

    async def basic_consume(self, queue: str, callback: Any, *, consumer_tag: str) -> Basic.ConsumeOk:
        self.consumers[consumer_tag] = callback
        self.consumed.append((queue, consumer_tag))
        for tag in self.before_consume_ok:
            await self.deliver(consumer_tag, tag)
        return Basic.ConsumeOk(consumer_tag)

    async def basic_cancel(self, consumer_tag: str) -> None:
        self.consumers.pop(consumer_tag, None)

    async def deliver(self, consumer_tag: str, delivery_tag: int) -> None:
        """A Basic.Deliver read by the channel's reader (its header and body follow)."""
        await self._on_deliver_frame(Basic.Deliver(consumer_tag=consumer_tag, delivery_tag=delivery_tag))


class Recording:
    """An InlineConsumer that notes which way each delivery came."""

    def __init__(self) -> None:
        self.taken: list[tuple[str, Any]] = []

    def inline(self, message: Any) -> None:
        self.taken.append(("inline", message))

    async def __call__(self, message: Any) -> None:
        self.taken.append(("task", message))


def test_an_inline_consumer_is_called_at_once_even_for_a_delivery_before_the_consume_ok() -> None:
    async def scenario() -> tuple[DeliveringChannel, Recording]:
        channel, consumer = DeliveringChannel(), Recording()
        channel.before_consume_ok = [1]
        tag = await fastpath.consume(channel, "q", consumer)  # type: ignore[arg-type]  # a stand-in channel
        await channel.deliver(tag, 2)
        return channel, consumer

    channel, consumer = asyncio.run(scenario())
    assert consumer.taken == [("inline", (1, b"{}")), ("inline", (2, b"{}"))]
    assert channel.tasks == [] and [queue for queue, _ in channel.consumed] == ["q"]


def test_a_consumer_that_aiormq_knows_but_we_did_not_start_runs_in_a_task_as_aiormq_runs_it() -> None:
    async def scenario() -> Recording:
        channel, ours, theirs = DeliveringChannel(), Recording(), Recording()
        await fastpath.consume(channel, "q", ours)  # type: ignore[arg-type]  # a stand-in channel
        channel.consumers["theirs"] = theirs  # consumed through aiormq's basic_consume directly
        await channel.deliver("theirs", 7)
        await asyncio.gather(*channel.tasks)
        return theirs

    assert asyncio.run(scenario()).taken == [("task", (7, b"{}"))]


def test_after_a_cancel_a_late_delivery_reaches_no_one() -> None:
    async def scenario() -> Recording:
        channel, consumer = DeliveringChannel(), Recording()
        tag = await fastpath.consume(channel, "q", consumer)  # type: ignore[arg-type]  # a stand-in channel
        await fastpath.cancel(channel, tag)  # type: ignore[arg-type]  # a stand-in channel
        await channel.deliver(tag, 3)  # in flight when the consumer was cancelled: the broker requeues it
        return consumer

    assert asyncio.run(scenario()).taken == []


def test_where_aiormq_changed_what_it_relies_on_each_delivery_runs_in_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "usable", lambda part: part is not gate.INLINE_DELIVERIES)

    async def scenario() -> Recording:
        channel, consumer = DeliveringChannel(), Recording()
        tag = await fastpath.consume(channel, "q", consumer)  # type: ignore[arg-type]  # a stand-in channel
        with pytest.raises(AssertionError, match="aiormq's own way"):  # its reader was left as it is
            await channel.deliver(tag, 5)
        await channel.consumers[tag]((4, b"{}"))  # what aiormq's own _on_deliver_frame awaits in its task
        return consumer

    assert asyncio.run(scenario()).taken == [("task", (4, b"{}"))]


def test_with_fastpath_off_deliveries_each_delivery_runs_in_a_task(fastpath_off: Callable[[str], None]) -> None:
    fastpath_off("deliveries")

    async def scenario() -> tuple[DeliveringChannel, Recording]:
        channel, consumer = DeliveringChannel(), Recording()
        tag = await fastpath.consume(channel, "q", consumer)  # type: ignore[arg-type]  # a stand-in channel
        with pytest.raises(AssertionError, match="aiormq's own way"):  # the channel's reader was left as it is
            await channel.deliver(tag, 5)
        await channel.consumers[tag]((4, b"{}"))  # what aiormq's own _on_deliver_frame awaits in its task
        await fastpath.cancel(channel, tag)  # type: ignore[arg-type]  # a stand-in channel
        return channel, consumer

    channel, consumer = asyncio.run(scenario())
    assert consumer.taken == [("task", (4, b"{}"))]
    assert channel.consumers == {}
