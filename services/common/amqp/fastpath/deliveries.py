"""Deliveries handed to a consumer by the channel's reader, without a task each.

aiormq runs every consumer callback in a new task, registered in two future stores with three
done callbacks: ~10 % of metric_api's CPU (py-spy). A consumer whose work per delivery is
synchronous (validate, put in its inbox) does not need one. ``consume`` starts consuming with an
``InlineConsumer``; where this aiormq allows (``gate.INLINE_DELIVERIES``), the channel's reader
calls its ``inline`` for each delivery, else aiormq awaits the consumer in a task each, as usual.
"""

import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from services.common.amqp.fastpath import gate

log = logging.getLogger(__name__)

# The attributes of an aiormq Channel that the replaced _on_deliver_frame uses.
DELIVERY_INTERNALS = ("_on_deliver_frame", "_Channel__get_content_header", "_read_content", "consumers", "_on_consumer_done")


class InlineConsumer(Protocol):
    """A consumer callback that can take a delivery at once, in the channel's reader."""

    def inline(self, message: DeliveredMessage) -> None:
        """Take the delivery; must neither block nor raise (it runs in the channel's frame reader)."""

    async def __call__(self, message: DeliveredMessage) -> None:
        """aiormq's way, in a task of its own: where this aiormq does not allow ``inline``."""


async def consume(channel: AbstractChannel, queue: str, consumer: InlineConsumer) -> str:
    """Consume ``queue`` on ``channel`` with ``consumer``; its consumer tag."""
    tag = f"ctag{getattr(channel, 'number', 0)}.{uuid.uuid4().hex}"
    inline = _inline_deliveries(channel)
    if inline is not None:
        inline.consumers[tag] = consumer.inline  # before the Basic.Consume: its first delivery may come at once
    try:
        await channel.basic_consume(queue, consumer, consumer_tag=tag)
    except BaseException:
        if inline is not None:
            inline.consumers.pop(tag, None)
        raise
    return tag


async def cancel(channel: AbstractChannel, tag: str) -> None:
    """Stop the consumer ``tag`` on ``channel``."""
    inline = _inline_deliveries(channel)
    if inline is not None:
        inline.consumers.pop(tag, None)
    await channel.basic_cancel(tag)


def _inline_deliveries(channel: AbstractChannel) -> "_InlineDeliveries | None":
    """The channel's deliveries to inline consumers, set up on first use; None where this aiormq does not allow it."""
    taken_over = getattr(getattr(channel, "_on_deliver_frame", None), "__self__", None)
    if isinstance(taken_over, _InlineDeliveries):
        return taken_over
    if not (gate.usable(gate.INLINE_DELIVERIES) and all(hasattr(channel, name) for name in DELIVERY_INTERNALS)):
        return None
    inline = _InlineDeliveries(channel)
    channel._on_deliver_frame = inline.on_deliver_frame  # type: ignore[attr-defined]  # aiormq's own, gated by INLINE_DELIVERIES
    return inline


class _InlineDeliveries:
    """aiormq 7.2.4's ``Channel._on_deliver_frame`` for one channel, calling an inline consumer at once."""

    __slots__ = ("channel", "consumers")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.consumers: dict[str, Callable[[DeliveredMessage], None]] = {}  # consumer tag -> its inline

    async def on_deliver_frame(self, frame: Basic.Deliver) -> None:
        channel = self.channel
        header = await channel._Channel__get_content_header()
        message = await channel._read_content(frame, header)
        tag = frame.consumer_tag
        consumer = channel.consumers.get(tag) if tag is not None else None
        if consumer is None:  # cancelled meanwhile (by us or by the broker): as aiormq, nothing to call
            return
        inline = self.consumers.get(tag) if tag is not None else None
        if inline is None:
            task = channel.create_task(consumer(message))
            task.add_done_callback(channel._on_consumer_done)
            return
        try:
            inline(message)
        except Exception:  # the reader must go on; the delivery stays unacked until its channel closes (then redelivered)
            log.exception("a consumer failed on delivery %s", frame.delivery_tag)
