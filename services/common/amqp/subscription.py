"""One queue consumed on a robust channel, consumed again whenever the broker side lets go of it.

The consumer takes deliveries with aiormq's ``basic_consume`` on the robust channel's current
aiormq channel, not through aio-pika's ``Queue.consume`` (that wraps every delivery in an
``IncomingMessage`` and a second task, measured at ~10 % of a consuming service's CPU,
docs/performance.md). aio-pika's robust channel therefore does not know this consumer, so it
does its part of the robustness itself: when the robust channel is reopened (a reconnect, or a
channel the broker closed) it consumes again on the new aiormq channel, and a consumer the
broker cancels (its queue deleted, say) is consumed again after a pause. One consumer at a
time, never two (a lock).
"""

import asyncio
import contextlib
import logging

from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from services.common.amqp import fastpath
from services.common.amqp.clock import LOOP_CLOCK, Clock
from services.common.amqp.errors import BROKER_GONE

log = logging.getLogger(__name__)

CANCELLED_RETRY_S = 1.0  # after the broker cancelled a consumer, consume again this much later


class Subscription:
    """``queue`` consumed with ``consumer`` on a robust channel, while wanted."""

    def __init__(self, queue: str, consumer: fastpath.InlineConsumer, clock: Clock = LOOP_CLOCK) -> None:
        self.queue = queue
        self._consumer = consumer
        self._clock = clock
        self._channel: AbstractRobustChannel | None = None
        self._wanted = False
        self._consuming_on: AbstractChannel | None = None  # the aiormq channel of ``_tag``
        self._tag: str | None = None
        self._watched: AbstractChannel | None = None  # the aiormq channel whose broker-side cancels we follow
        self._lock = asyncio.Lock()  # a reopen and a broker's cancel may both consume again at once
        self._again: asyncio.Task[None] | None = None

    def attach(self, channel: AbstractRobustChannel) -> None:
        """Consume on ``channel`` (a robust channel of its own), and again whenever it is reopened."""
        self._channel = channel
        channel.reopen_callbacks.add(self._reopened)

    @property
    def consuming(self) -> bool:
        return self._tag is not None

    async def consume(self) -> None:
        """Consume from now on (on the channel's current aiormq channel, unless it already does)."""
        self._wanted = True
        await self._consume()

    async def _consume(self) -> None:
        async with self._lock:
            if not self._wanted or self._channel is None:
                return
            channel = await self._channel.get_underlay_channel()
            if self._tag is not None and self._consuming_on is channel and not channel.is_closed:
                return
            if channel is not self._watched:
                self._watched = channel
                channel.on_consumer_cancel_callbacks.add(self._cancelled_by_broker)
            self._tag = await fastpath.consume(channel, self.queue, self._consumer)
            self._consuming_on = channel

    async def stop(self) -> None:
        """Stop consuming; deliveries in hand stay the consumer's until it settles them."""
        self._wanted = False
        if self._again is not None:
            self._again.cancel()
        async with self._lock:
            if self._consuming_on is not None and self._tag is not None:
                channel, tag = self._consuming_on, self._tag
                self._consuming_on = self._tag = None
                # Any error means the channel is already gone: the broker requeues what we held.
                with contextlib.suppress(Exception):
                    await fastpath.cancel(channel, tag)

    async def _reopened(self, _channel: object) -> None:
        """The robust channel came back on a new aiormq channel (aio-pika redeclared the queue):
        consume there, as aio-pika does for the consumers it knows."""
        self._consuming_on = self._tag = None
        try:
            await self._consume()
        except BROKER_GONE as exc:  # gone again at once: the next reopen consumes
            log.warning("could not consume %s on the reopened channel (%s)", self.queue, exc)

    def _cancelled_by_broker(self, frame: Basic.Cancel) -> None:
        if self._tag is None or frame.consumer_tag != self._tag:
            return
        self._consuming_on = self._tag = None
        log.warning("the broker cancelled the consumer of %s; consuming it again", self.queue)
        if self._again is None or self._again.done():
            self._again = asyncio.create_task(self._consume_again(), name=f"reconsume-{self.queue}")

    async def _consume_again(self) -> None:
        while self._tag is None and self._wanted:
            await self._clock.sleep(CANCELLED_RETRY_S)
            try:
                await self._consume()
            except Exception as exc:  # noqa: BLE001 - the queue may be gone for a while (deleted, its node down): keep trying
                log.warning("cannot consume %s again yet (%s); retrying", self.queue, str(exc) or type(exc).__name__)
