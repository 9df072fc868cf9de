"""BatchConsumer: the deliveries of one or more queues, validated, handed to one handler in
batches, and settled by the one failure rule (failure.py).

Wiring only. Each queue is a ``Subscription`` (consumed again after a reopen or a broker's
cancel); a delivery is validated (delivery.py) into the inbox, or copied to its DLQ and acked
once that copy is confirmed; the worker takes batches from the inbox to the handler and does
what the failure rule says when it raises; ``AckPlanner`` (acks.py) decides which acks and nacks
settle them. Where ``fastpath`` allows, the channel's reader hands each delivery over at once
(``inline``), without a task each; only a delivery to dead-letter gets a task.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import AbstractChannel, DeliveredMessage
from pydantic import ValidationError

from services.common.amqp import acks
from services.common.amqp.acks import AckPlanner
from services.common.amqp.batches import BATCH_MAX, BATCH_WINDOW_S, next_batch
from services.common.amqp.clock import LOOP_CLOCK, Clock
from services.common.amqp.delivery import Context, Delivery, Refusal, Rejection, dead_letter_copy, delivery_tag, validate
from services.common.amqp.errors import BROKER_GONE
from services.common.amqp.failure import HandBack, Then, Verdict, after_failure
from services.common.amqp.instruments import HANDLE_SECONDS, MESSAGES_CONSUMED, MESSAGES_DEAD_LETTERED
from services.common.amqp.publisher import Publisher
from services.common.amqp.subscription import Subscription
from services.common.amqp.topology import declare_queue
from services.common.messages import SampleMessage
from services.common.settings import QueueType

__all__ = ["BatchConsumer", "Delivery", "HandBack", "Rejection"]

log = logging.getLogger(__name__)

RESUME_RETRY_S = 1.0
RECOVER_PAUSE_S = 2.0  # the recovery of a consumer given none: a pause

BatchHandler = Callable[[list[Delivery[Any]]], Awaitable[Sequence[Rejection]]]


class _Taker:
    """The consumer callback of one queue (a ``fastpath.InlineConsumer``): ``inline`` where the
    channel's reader calls it at once, else awaited by aiormq in a task per delivery."""

    __slots__ = ("consumed", "consumer", "context", "queue", "schema")

    def __init__(self, consumer: "BatchConsumer", queue: str, schema: type[SampleMessage], context: Context | None) -> None:
        self.consumer, self.queue, self.schema, self.context = consumer, queue, schema, context
        self.consumed = MESSAGES_CONSUMED.labels(queue=queue)
        MESSAGES_DEAD_LETTERED.labels(queue=queue)  # at 0 from the start: Prometheus' increase() sees the first one

    def inline(self, message: DeliveredMessage) -> None:
        self.consumer._take(message, self)

    async def __call__(self, message: DeliveredMessage) -> None:
        self.consumer._take(message, self)


class BatchConsumer:
    """Consumes one or more queues into one batch handler (see failure.py for the failure rule)."""

    def __init__(
        self,
        handler: BatchHandler,
        *,
        recover: Callable[[], Awaitable[None]] | None = None,
        batch_max: int = BATCH_MAX,
        window_s: float = BATCH_WINDOW_S,
        invalid: Callable[[ValidationError | None], None] | None = None,
        on_dead_lettered: Callable[[int], Awaitable[None]] | None = None,
        clock: Clock = LOOP_CLOCK,
    ) -> None:
        """``recover``: awaited after a ``HandBack``, consuming resumes when it returns (default: a
        pause). ``invalid`` is told of each message dead-lettered before it reached the handler:
        its validation error, or None for one too large (model_api counts them by reason).
        ``on_dead_lettered`` is told how many were dead-lettered, each time, and awaited before they are
        acked: a service that keeps count durably then never loses one to a crash (it may count one twice:
        a message dead-lettered again after a crash before its ack has two copies in the DLQ too)."""
        self._handler = handler
        self._recover = recover or functools.partial(clock.sleep, RECOVER_PAUSE_S)
        self._batch_max, self._window_s = batch_max, window_s
        self._invalid = invalid
        self._on_dead_lettered = on_dead_lettered
        self._clock = clock
        self._subscriptions: list[Subscription] = []
        self._takers: list[_Taker] = []
        self._inbox: asyncio.Queue[Delivery[Any]] = asyncio.Queue()
        self._acks: AckPlanner[AbstractChannel] = AckPlanner()
        self._dead_letters: Publisher | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()  # dead-lettering: stop() waits for it
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set while the worker holds no batch
        self._idle.set()
        self._recovery: asyncio.Task[None] | None = None
        self.handed_back: str | None = None  # why deliveries are being handed back, while they are
        self.dead_lettered = 0

    def subscribe(self, queue: str, schema: type[SampleMessage], context: Context | None = None) -> None:
        """Consume ``queue`` (a broker name, prefix applied), validating with ``schema`` (given what
        ``context()`` returns at each delivery as pydantic's validation context)."""
        taker = _Taker(self, queue, schema, context)
        self._takers.append(taker)
        self._subscriptions.append(Subscription(queue, taker, self._clock))

    @property
    def queues(self) -> list[str]:
        return [subscription.queue for subscription in self._subscriptions]

    async def start(
        self,
        open_channel: Callable[[], Awaitable[AbstractRobustChannel]],
        dead_letters: Publisher,
        queue_type: QueueType = "classic",
    ) -> None:
        """Declare each queue (of ``queue_type``) and consume it on its own channel; start the batch worker."""
        self._dead_letters = dead_letters
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name=f"batches-{'+'.join(self.queues)}")
        for subscription in self._subscriptions:
            channel = await open_channel()
            await declare_queue(channel, subscription.queue, queue_type)
            subscription.attach(channel)
        await self.resume()

    async def pause(self) -> None:
        """Stop taking deliveries; those in hand stay ours until settled."""
        for subscription in self._subscriptions:
            await subscription.stop()

    async def resume(self) -> None:
        for subscription in self._subscriptions:
            await subscription.consume()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking deliveries, give the worker ``grace_s`` to finish what it holds, then stop it.
        What is left unacked the broker delivers again."""
        await self.pause()
        deadline = self._clock.time() + grace_s
        while not self._inbox.empty() and self._clock.time() < deadline:  # a queue has no "emptied" event; once, at stop
            await self._clock.sleep(0.01)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=max(0.0, deadline - self._clock.time()))
        try:  # a batch being handled is finished, not cut short: its effect and its acks go together
            await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, deadline - self._clock.time()))
        except TimeoutError:
            log.warning(
                "a batch from %s was still being handled after %ss; it will be delivered again", "+".join(self.queues), grace_s
            )
        for task in (self._worker, self._recovery):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # -- deliveries: aiormq's reader (or a task of aiormq's) calls this for each
    def _take(self, raw: DeliveredMessage, taker: _Taker) -> None:
        """Into the inbox if valid; else to the DLQ, in a task."""
        self._acks.received(raw.channel, delivery_tag(raw))
        arrived = self._clock.time()
        found = validate(raw.body, taker.schema, taker.context)
        if not isinstance(found, Refusal):
            taker.consumed.inc()
            self._inbox.put_nowait(Delivery(found, raw, taker.queue, arrived))
            return
        if self._invalid is not None:
            try:
                self._invalid(found.error)
            except Exception:  # counting it must never keep a bad message from its DLQ
                log.exception("the consumer's invalid-message hook failed; the message is dead-lettered all the same")
        self._in_the_background(self._dead_letter([(Delivery(None, raw, taker.queue, arrived), found.reason)]))

    def _in_the_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"dead-letter-{'+'.join(self.queues)}")
        self._in_flight.add(task)  # from now: stop() waits for it
        task.add_done_callback(self._in_flight.discard)

    # -- the worker
    async def _work(self) -> None:
        while True:
            batch = await next_batch(self._inbox, self._batch_max, self._window_s)
            self._idle.clear()
            try:
                if self.handed_back is not None:
                    await self.settle(batch, requeue=True)  # taken before the pause: back they go too
                else:
                    await self._handle(batch)
            finally:
                self._idle.set()

    async def _handle(self, batch: list[Delivery[Any]]) -> None:
        try:
            rejected = await self._handler(batch)
        except Exception as exc:  # noqa: BLE001 - the failure rule decides
            await self._failed(batch, exc, after_failure(exc, len(batch), bool(batch[0].raw.redelivered)))
            return
        refused = {id(delivery) for delivery, _ in rejected}
        await asyncio.gather(
            self.settle([delivery for delivery in batch if id(delivery) not in refused]),
            self._dead_letter(list(rejected)),
        )

    async def _failed(self, batch: list[Delivery[Any]], exc: Exception, verdict: Verdict) -> None:
        sample_id = getattr(batch[0].message, "id", "?")
        if verdict.then is Then.HAND_BACK:
            await self._hand_back(batch, verdict.reason)
        elif verdict.then is Then.ONE_AT_A_TIME:
            log.warning(
                "a batch of %d from %s failed (%s: %s); handling its messages one at a time",
                len(batch), "+".join(self.queues), type(exc).__name__, exc,
            )  # fmt: skip
            for delivery in batch:
                if self.handed_back is not None:
                    await self.settle([delivery], requeue=True)
                else:
                    await self._handle([delivery])
        elif verdict.then is Then.DEAD_LETTER:
            log.error(
                "handling %s from %s failed again (%s: %s); dead-lettering it", sample_id, batch[0].queue, type(exc).__name__, exc
            )
            await self._dead_letter([(batch[0], verdict.reason)])
        else:
            log.error("handling %s from %s failed; requeueing it once", sample_id, batch[0].queue, exc_info=exc)
            await self.settle(batch, requeue=True)

    async def _hand_back(self, batch: list[Delivery[Any]], reason: str) -> None:
        if self.handed_back is None:
            self.handed_back = reason
            log.error("%s; handing deliveries back and pausing consumption until that is fixed", reason)
            await self.pause()
            self._recovery = asyncio.create_task(self._recover_then_resume(), name="consumer-recover")
        await self.settle(batch, requeue=True)

    async def _recover_then_resume(self) -> None:
        await self._recover()
        self.handed_back = None
        said = False
        while True:
            try:
                await self.resume()
            except BROKER_GONE as exc:  # the broker went away meanwhile: its channel comes back with the connection
                if not said:
                    log.warning(
                        "cannot consume %s again yet (%s); retrying", "+".join(self.queues), str(exc) or type(exc).__name__
                    )
                    said = True
                await self._clock.sleep(RESUME_RETRY_S)
            else:
                break
        log.info("consuming %s again", "+".join(self.queues))

    # -- settling
    async def _dead_letter(self, rejected: list[Rejection]) -> None:
        """Copy each delivery to its ``<queue>.dlq`` with the reason; ack it once that copy is confirmed."""
        if not rejected:
            return
        assert self._dead_letters is not None, "start() first"
        for delivery, reason in rejected:
            log.warning("dead-lettering a message from %s: %s", delivery.queue, reason)
        await self._dead_letters.publish_many([dead_letter_copy(delivery, reason) for delivery, reason in rejected])
        for delivery, _ in rejected:
            MESSAGES_DEAD_LETTERED.labels(queue=delivery.queue).inc()
        self.dead_lettered += len(rejected)
        if self._on_dead_lettered is not None:
            await self._on_dead_lettered(len(rejected))
        await self.settle([delivery for delivery, _ in rejected])

    async def settle(self, deliveries: Sequence[Delivery[Any]], *, requeue: bool | None = None) -> None:
        """Ack (or, with ``requeue`` given, nack) deliveries, all in one write (acks.py: one
        ``multiple`` ack per channel where that covers exactly them)."""
        if requeue is None:
            now = self._clock.time()
            for delivery in deliveries:
                _handle_seconds(delivery.queue).observe(now - delivery.arrived)
        settling = [(delivery.raw.channel, delivery_tag(delivery.raw)) for delivery in deliveries]
        settlements = self._acks.plan(settling, requeue=requeue)
        for channel in self._acks.channels:
            if channel.is_closed:
                self._acks.forget(channel)
        await acks.send(settlements)


@functools.cache
def _handle_seconds(queue: str) -> Any:
    """The queue's child of HANDLE_SECONDS (``labels()`` costs a lookup and a lock per call)."""
    return HANDLE_SECONDS.labels(queue=queue)
