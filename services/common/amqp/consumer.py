"""Consuming, for every service: validate each delivery, dead-letter what is bad, hand the good
ones to the service in batches, and ack only after the service's effect is durable.

The one failure rule:

- A message that is too large or does not pass its schema goes to ``<queue>.dlq`` at once,
  with the reason in its ``x-dlq-reason`` header.
- The batch handler returns the deliveries it refuses, each with a reason: they are
  dead-lettered. Every other delivery of the batch is acked once the handler has returned,
  that is, once its effect is durable.
- A handler that raises on a batch gets the batch again one message at a time, so one bad
  message does not take its batch with it. A message that fails on its own is requeued once;
  failing again on its redelivery, it is dead-lettered with the error. Never a loop.
- A handler that raises ``HandBack`` says the fault is not in the messages (the disk is full
  or read-only): the batch goes back to the queue unjudged, the consumer stops taking
  deliveries and runs its ``recover`` coroutine, and resumes when that returns.

A dead-lettered delivery is acked only after its copy in the DLQ is confirmed, and an ack
with ``multiple=True`` never covers a delivery still being dead-lettered.

Deliveries are taken with aiormq's ``basic_consume`` on the robust channel's current aiormq
channel, not through aio-pika's ``Queue.consume``: that wraps every delivery in an
``IncomingMessage`` and a second task, measured at ~10 % of a consuming service's CPU
(docs/performance.md). aiormq itself runs a task per delivery; where ``fastpath.deliver_inline``
can, the channel's reader instead calls the consumer's synchronous ``_take`` (validate, into the
inbox) at once, and only a delivery to dead-letter gets a task. aio-pika's robust channel
therefore does not know these consumers, so
the consumer does its part of the robustness itself: when the robust channel is reopened (a
reconnect, or a channel the broker closed) it consumes again on the new aiormq channel, and a
consumer the broker cancels (its queue deleted, say) is consumed again after a pause.
"""

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic
from pydantic import ValidationError

from services.common.amqp import fastpath
from services.common.amqp.errors import BROKER_GONE
from services.common.amqp.instruments import HANDLE_SECONDS, MESSAGES_CONSUMED, MESSAGES_DEAD_LETTERED
from services.common.amqp.publisher import Outgoing, Publisher
from services.common.amqp.topology import declare_queue, dlq_name
from services.common.messages import MAX_MESSAGE_BYTES, SampleMessage
from services.common.settings import QueueType

log = logging.getLogger(__name__)

M = TypeVar("M", bound=SampleMessage)
T = TypeVar("T")

BATCH_MAX = 500
# A quiet pipeline must not wait for a batch to fill: after the first delivery, wait at most this.
BATCH_WINDOW_S = 0.002
REASON_MAX = 1000  # characters of x-dlq-reason
RESUME_RETRY_S = 1.0
CANCELLED_RETRY_S = 1.0  # after the broker cancelled a consumer, consume again this much later


@dataclass(slots=True, eq=False)
class Delivery(Generic[M]):
    """A delivery and its validated message (None for one refused before validation)."""

    message: M
    raw: DeliveredMessage  # aiormq's: its channel is the aiormq channel it came on
    queue: str
    arrived: float  # the event loop's clock


Rejection = tuple[Delivery[Any], str]
BatchHandler = Callable[[list[Delivery[Any]]], Awaitable[Sequence[Rejection]]]


class HandBack(Exception):
    """Raised by a batch handler when the fault is not in the messages (storage): the batch goes
    back to the queue, and the consumer pauses until its ``recover`` coroutine returns."""


@dataclass
class _Subscription:
    queue: str
    schema: type[SampleMessage]
    # What the validators need to know now (model_api: the schema of the model in service), or None.
    context: Callable[[], dict[str, Any]] | None = None
    channel: AbstractRobustChannel | None = None
    consuming_on: AbstractChannel | None = None  # the aiormq channel of ``tag``
    tag: str | None = None
    # A reopen and a broker's cancel may both consume again at once: one consumer, not two.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Callback:
    """The consumer callback of one subscription: awaited in a task per delivery by aiormq, or,
    where ``fastpath.deliver_inline`` took over the channel's deliveries, its ``inline`` called."""

    __slots__ = ("_consumer", "_subscription")

    def __init__(self, consumer: "BatchConsumer", subscription: _Subscription) -> None:
        self._consumer, self._subscription = consumer, subscription

    def inline(self, raw: DeliveredMessage) -> None:
        self._consumer._on_delivery_inline(raw, self._subscription)

    def __call__(self, raw: DeliveredMessage) -> Coroutine[Any, Any, None]:
        return self._consumer._on_delivery(raw, self._subscription)


async def next_batch(inbox: asyncio.Queue[T], max_size: int = BATCH_MAX, window_s: float = BATCH_WINDOW_S) -> list[T]:
    """Wait for one item, then take whatever else arrives within ``window_s``, up to ``max_size``."""
    loop = asyncio.get_running_loop()
    batch = [await inbox.get()]
    deadline = loop.time() + window_s
    while len(batch) < max_size:
        try:
            batch.append(inbox.get_nowait())
            continue
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(inbox.get(), remaining))
        except TimeoutError:
            break
    return batch


async def _recover_later() -> None:
    await asyncio.sleep(2.0)


class BatchConsumer:
    """Consumes one or more queues into one batch handler (see the module's failure rule)."""

    def __init__(
        self,
        handler: BatchHandler,
        *,
        recover: Callable[[], Awaitable[None]] = _recover_later,
        batch_max: int = BATCH_MAX,
        window_s: float = BATCH_WINDOW_S,
        invalid: Callable[[ValidationError | None], None] | None = None,
        on_dead_lettered: Callable[[int], None] | None = None,
    ) -> None:
        """``invalid`` is told of each message dead-lettered before it reached the handler: its
        validation error, or None for one too large (model_api counts them by reason)."""
        self._handler = handler
        self._invalid = invalid
        self._recover = recover
        self._on_dead_lettered = on_dead_lettered  # told how many were dead-lettered, each time (a service may keep count)
        self._batch_max = batch_max
        self._window_s = window_s
        self._subscriptions: list[_Subscription] = []
        self._inbox: asyncio.Queue[Delivery[Any]] = asyncio.Queue()
        self._dead_letters: Publisher | None = None
        # Delivery tags received and not yet settled, per channel: an ack with multiple=True
        # is sent only when it covers exactly the deliveries being acked.
        self._unsettled: dict[AbstractChannel, set[int]] = {}
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._paused = False
        self._watched: set[AbstractChannel] = set()  # aiormq channels whose broker-side cancels we follow
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set while the worker holds no batch
        self._idle.set()
        self._recovery: asyncio.Task[None] | None = None
        self.handed_back: str | None = None  # why deliveries are being handed back, while they are
        self.dead_lettered = 0

    def subscribe(self, queue: str, schema: type[SampleMessage], context: Callable[[], dict[str, Any]] | None = None) -> None:
        """Consume ``queue`` (a broker name, prefix applied), validating with ``schema`` (given what
        ``context()`` returns at each delivery as pydantic's validation context)."""
        self._subscriptions.append(_Subscription(queue, schema, context))

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
            subscription.channel = channel
            channel.reopen_callbacks.add(functools.partial(self._reopened, subscription=subscription))
        await self.resume()

    async def pause(self) -> None:
        """Stop taking deliveries; those in hand stay ours until settled."""
        self._paused = True
        for subscription in self._subscriptions:
            async with subscription.lock:
                if subscription.consuming_on is not None and subscription.tag is not None:
                    channel, tag = subscription.consuming_on, subscription.tag
                    subscription.consuming_on = subscription.tag = None
                    # Any error means the channel is already gone: the broker requeues what we held.
                    with contextlib.suppress(Exception):
                        await channel.basic_cancel(tag)

    async def resume(self) -> None:
        self._paused = False
        for subscription in self._subscriptions:
            await self._consume(subscription)

    async def _consume(self, subscription: _Subscription) -> None:
        """Consume ``subscription``'s queue on its robust channel's current aiormq channel, unless
        it already does (or the consumer is paused)."""
        async with subscription.lock:
            if self._paused or subscription.channel is None:
                return
            channel = await subscription.channel.get_underlay_channel()
            if subscription.tag is not None and subscription.consuming_on is channel and not channel.is_closed:
                return
            if channel not in self._watched:  # a consumer the broker cancels is consumed again
                self._watched.add(channel)
                channel.on_consumer_cancel_callbacks.add(self._cancelled_by_broker)
                fastpath.deliver_inline(channel)
            consume_ok = await channel.basic_consume(subscription.queue, _Callback(self, subscription))
            subscription.consuming_on, subscription.tag = channel, consume_ok.consumer_tag

    async def _reopened(self, _channel: object, subscription: _Subscription) -> None:
        """The robust channel came back on a new aiormq channel (aio-pika redeclared the queue):
        consume there, as aio-pika does for the consumers it knows."""
        subscription.consuming_on = subscription.tag = None
        try:
            await self._consume(subscription)
        except BROKER_GONE as exc:  # gone again at once: the next reopen consumes
            log.warning("could not consume %s on the reopened channel (%s)", subscription.queue, exc)

    def _cancelled_by_broker(self, frame: Basic.Cancel) -> None:
        for subscription in self._subscriptions:
            if subscription.tag is not None and subscription.tag == frame.consumer_tag:
                subscription.consuming_on = subscription.tag = None
                log.warning("the broker cancelled the consumer of %s; consuming it again", subscription.queue)
                task = asyncio.create_task(self._consume_again(subscription), name=f"reconsume-{subscription.queue}")
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _consume_again(self, subscription: _Subscription) -> None:
        while subscription.tag is None and not self._paused:
            await asyncio.sleep(CANCELLED_RETRY_S)
            try:
                await self._consume(subscription)
            except Exception as exc:  # noqa: BLE001 - the queue may be gone for a while (deleted, its node down): keep trying
                log.warning("cannot consume %s again yet (%s); retrying", subscription.queue, str(exc) or type(exc).__name__)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking deliveries, give the worker ``grace_s`` to finish what it holds, then stop it.
        What is left unacked the broker delivers again."""
        await self.pause()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while not self._inbox.empty() and loop.time() < deadline:  # noqa: ASYNC110 - a queue has no "emptied" event; once, at stop
            await asyncio.sleep(0.01)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=max(0.0, deadline - loop.time()))
        try:  # a batch being handled is finished, not cut short: its effect and its acks go together
            await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, deadline - loop.time()))
        except TimeoutError:
            log.warning(
                "a batch from %s was still being handled after %ss; it will be delivered again", "+".join(self.queues), grace_s
            )
        for task in (self._worker, self._recovery):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # -- deliveries
    def _take(self, raw: DeliveredMessage, subscription: _Subscription) -> Rejection | None:
        """A delivery arrived: into the inbox if valid; else what to dead-letter and why."""
        self._unsettled.setdefault(raw.channel, set()).add(delivery_tag(raw))
        arrived = asyncio.get_running_loop().time()
        error: ValidationError | None = None
        if len(raw.body) > MAX_MESSAGE_BYTES:
            reason = f"message of {len(raw.body)} bytes exceeds {MAX_MESSAGE_BYTES}"
        else:
            try:
                context = None if subscription.context is None else subscription.context()
                message = subscription.schema.model_validate_json(raw.body, context=context)
            except ValidationError as exc:
                error, reason = exc, describe_validation_error(exc)
            else:
                _consumed(subscription.queue).inc()
                self._inbox.put_nowait(Delivery(message, raw, subscription.queue, arrived))
                return None
        if self._invalid is not None:
            try:
                self._invalid(error)
            except Exception:  # counting it must never keep a bad message from its DLQ
                log.exception("the consumer's invalid-message hook failed; the message is dead-lettered all the same")
        return Delivery(None, raw, subscription.queue, arrived), reason

    async def _on_delivery(self, raw: DeliveredMessage, subscription: _Subscription) -> None:
        """aiormq's public way: a task per delivery runs this."""
        if (refused := self._take(raw, subscription)) is not None:
            await self._dead_letter_in_flight(refused)

    def _on_delivery_inline(self, raw: DeliveredMessage, subscription: _Subscription) -> None:
        """The fast way (fastpath.deliver_inline): aiormq's reader calls this, no task per delivery;
        only a delivery to dead-letter gets a task."""
        if (refused := self._take(raw, subscription)) is not None:
            task = asyncio.create_task(self._dead_letter_in_flight(refused), name=f"dead-letter-{subscription.queue}")
            self._in_flight.add(task)  # from now: stop() waits for it
            task.add_done_callback(self._in_flight.discard)

    async def _dead_letter_in_flight(self, refused: Rejection) -> None:
        """Dead-letter one delivery; ``stop`` waits for it (an in-flight task)."""
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._dead_letter([refused])
        finally:
            if task is not None:
                self._in_flight.discard(task)

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
        except asyncio.CancelledError:
            raise
        except HandBack as exc:
            await self._hand_back(batch, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the rule for a failing handler, below
            await self._failed(batch, exc)
            return
        refused = {id(delivery) for delivery, _ in rejected}
        await asyncio.gather(
            self.settle([delivery for delivery in batch if id(delivery) not in refused]),
            self._dead_letter(list(rejected)),
        )

    async def _failed(self, batch: list[Delivery[Any]], exc: Exception) -> None:
        if len(batch) > 1:
            log.warning(
                "a batch of %d from %s failed (%s: %s); handling its messages one at a time",
                len(batch), "+".join(self.queues), type(exc).__name__, exc,
            )  # fmt: skip
            for delivery in batch:
                if self.handed_back is not None:
                    await self.settle([delivery], requeue=True)
                else:
                    await self._handle([delivery])
            return
        delivery = batch[0]
        sample_id = getattr(delivery.message, "id", "?")
        if delivery.raw.redelivered:
            log.error(
                "handling %s from %s failed again (%s: %s); dead-lettering it", sample_id, delivery.queue, type(exc).__name__, exc
            )
            await self._dead_letter([(delivery, f"handling failed twice: {type(exc).__name__}: {exc}")])
        else:
            log.error("handling %s from %s failed; requeueing it once", sample_id, delivery.queue, exc_info=exc)
            await self.settle([delivery], requeue=True)

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
                await asyncio.sleep(RESUME_RETRY_S)
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
        await self._dead_letters.publish_many(
            [
                Outgoing(
                    dlq_name(delivery.queue),
                    delivery.raw.body,
                    message_id(delivery.raw),
                    {"x-dlq-reason": reason[:REASON_MAX], "x-original-queue": delivery.queue},
                )
                for delivery, reason in rejected
            ]
        )
        for delivery, _ in rejected:
            MESSAGES_DEAD_LETTERED.labels(queue=delivery.queue).inc()
        self.dead_lettered += len(rejected)
        if self._on_dead_lettered is not None:
            self._on_dead_lettered(len(rejected))
        await self.settle([delivery for delivery, _ in rejected])

    async def settle(self, deliveries: Sequence[Delivery[Any]], *, requeue: bool | None = None) -> None:
        """Ack (or, with ``requeue`` given, nack) deliveries, all in one write.

        Acks become a single ``multiple=True`` ack per channel when no other unsettled
        delivery of that channel has a lower tag (one being dead-lettered, say): acking it
        by accident could lose it.
        """
        by_channel: dict[AbstractChannel, list[DeliveredMessage]] = {}
        now = asyncio.get_running_loop().time()
        for delivery in deliveries:
            if requeue is None:
                _handle_seconds(delivery.queue).observe(now - delivery.arrived)
            by_channel.setdefault(delivery.raw.channel, []).append(delivery.raw)
        settling = []
        for channel, group in by_channel.items():
            unsettled = self._unsettled.get(channel, set())
            tags = {delivery_tag(raw) for raw in group}
            top = max(tags)
            if requeue is None and len(group) > 1 and all(tag in tags for tag in unsettled if tag <= top):
                settling.append(_ack_up_to(channel, top))
            else:
                settling.extend(_settle_one(raw, requeue=requeue) for raw in group)
            unsettled -= tags
        self._forget_closed_channels()
        await asyncio.gather(*settling)

    def _forget_closed_channels(self) -> None:
        for channel in [channel for channel in self._unsettled if channel.is_closed]:
            del self._unsettled[channel]
        self._watched = {channel for channel in self._watched if not channel.is_closed}


def delivery_tag(raw: DeliveredMessage) -> int:
    """Its delivery tag: aiormq types it optional (a returned message has none), a consumed one always has one."""
    tag = raw.delivery_tag
    assert tag is not None, "a delivery without a delivery tag"
    return tag


def message_id(raw: DeliveredMessage) -> str:
    """The AMQP message_id the publisher set (the sample id), or "" for a message without one."""
    return raw.header.properties.message_id or ""


@functools.cache
def _consumed(queue: str) -> Any:
    """The queue's child of MESSAGES_CONSUMED, looked up once."""
    return MESSAGES_CONSUMED.labels(queue=queue)


@functools.cache
def _handle_seconds(queue: str) -> Any:
    """The queue's child of HANDLE_SECONDS (``labels()`` costs a lookup and a lock per call)."""
    return HANDLE_SECONDS.labels(queue=queue)


def describe_validation_error(exc: ValidationError) -> str:
    """One short line for the x-dlq-reason header: the first problems, where and what."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


async def _settle_one(raw: DeliveredMessage, *, requeue: bool | None = None) -> None:
    """Ack (or nack) one delivery, tolerating a channel that died meanwhile.

    A delivery whose channel closed is redelivered by the broker; the consumers are
    idempotent by id, so losing the ack loses nothing (nor does not waiting for it to be written).
    """
    try:
        if requeue is None:
            await raw.channel.basic_ack(delivery_tag(raw), wait=False)
        else:
            await raw.channel.basic_nack(delivery_tag(raw), requeue=requeue, wait=False)
    except Exception as exc:  # noqa: BLE001 - aiormq fails a send on a dying channel with a bare Exception
        # The lost connection is logged once by BrokerLink; each delivery it takes down is not news.
        log.debug("could not settle delivery %s (%r); the broker will redeliver it", raw.delivery_tag, exc)


async def _ack_up_to(channel: AbstractChannel, tag: int) -> None:
    """Ack every delivery on ``channel`` up to and including ``tag`` (AMQP ``multiple``)."""
    try:
        await channel.basic_ack(tag, multiple=True, wait=False)
    except Exception as exc:  # noqa: BLE001 - as in _settle_one: the broker will redeliver them
        log.debug("could not ack deliveries up to %s (%r); the broker will redeliver them", tag, exc)
