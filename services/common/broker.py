"""Broker topology, the service's one connection, confirmed publishing and validated consuming.

The guarantees the whole system rests on live here, once:
- queues are durable and dead-letter to ``<queue>.dlq``; messages are persistent;
- a publish returns only after the broker confirmed it, and is retried until it is;
- a consumer sees only messages that passed the schema; the rest go to the DLQ with the
  reason in the ``x-dlq-reason`` header, and are acked only after that publish is confirmed.
Acking after the effect is the handler's job: only it knows when its effect is durable.
"""

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from aio_pika.exceptions import AMQPError, ProbableAuthenticationError, PublishError
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from yarl import URL

from services.common.coalescing import CoalescingRobustConnection
from services.common.messages import MAX_MESSAGE_BYTES, SampleMessage
from services.common.settings import Settings

log = logging.getLogger(__name__)

FEATURES, Y_TRUE, Y_PRED = "features", "y_true", "y_pred"

MESSAGES_CONSUMED = Counter("messages_consumed", "Messages taken from a queue and validated", ["queue"])
MESSAGES_PUBLISHED = Counter("messages_published", "Messages confirmed by the broker", ["queue"])
MESSAGES_DEAD_LETTERED = Counter("messages_dead_lettered", "Messages sent to <queue>.dlq", ["queue"])
PUBLISH_RETRIES = Counter("publish_retries", "Publishes retried after a failure or timeout", ["queue"])
BROKER_RECONNECTS = Counter("broker_reconnects", "Times the broker connection was re-established")
HANDLE_SECONDS = Histogram("message_handle_seconds", "Time to handle one delivery", ["queue"])

M = TypeVar("M", bound=SampleMessage)
PERSISTENT = 2  # AMQP delivery mode: written to disk by the broker


def dlq_name(queue: str) -> str:
    return f"{queue}.dlq"


async def declare_queue(channel: AbstractRobustChannel, name: str) -> AbstractRobustQueue:
    """Declare a durable queue and its durable dead-letter queue."""
    await channel.declare_queue(dlq_name(name), durable=True)
    return await channel.declare_queue(
        name,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq_name(name)},
    )


async def settle(message: AbstractIncomingMessage, *, requeue: bool | None = None) -> None:
    """Ack (or, with ``requeue`` given, nack) a delivery, tolerating a channel that died meanwhile.

    A delivery whose channel closed is redelivered by the broker; the consumers are
    idempotent by id, so losing the ack loses nothing.
    """
    try:
        if requeue is None:
            await message.ack()
        else:
            await message.nack(requeue=requeue)
    except Exception as exc:  # noqa: BLE001 - aiormq fails a send on a dying channel with a bare Exception
        # The lost connection is logged once by BrokerLink; each delivery it takes down is not news.
        log.debug("could not settle delivery %s (%r); the broker will redeliver it", message.delivery_tag, exc)


async def _ack_up_to(channel: Any, tag: int) -> None:
    """Ack every delivery on ``channel`` up to and including ``tag`` (AMQP ``multiple``)."""
    try:
        await channel.basic_ack(tag, multiple=True)
    except Exception as exc:  # noqa: BLE001 - as in settle(): the broker will redeliver them
        log.debug("could not ack deliveries up to %s (%r); the broker will redeliver them", tag, exc)


class BrokerLink:
    """The service's one robust connection to RabbitMQ, and what /health says about it.

    ``start()`` returns at once: the connection is made in the background, retried until
    the broker answers, so the service starts (and /health says why it is not ready)
    while the broker is down. Once connected, aio-pika's robust connection restores
    channels, queues and consumers by itself after a drop.
    """

    def __init__(
        self,
        settings: Settings,
        service: str,
        on_connect: Callable[[AbstractRobustConnection], Awaitable[None]],
    ) -> None:
        url = URL(str(settings.AMQP_URL))
        if "heartbeat" not in url.query:
            url = url.update_query(heartbeat=settings.AMQP_HEARTBEAT_S)
        self._url = str(url)
        self._where = f"RabbitMQ at {settings.AMQP_URL.host}:{settings.AMQP_URL.port or 5672}"
        self._user = settings.AMQP_URL.username or "guest"
        self._service = service
        self._on_connect = on_connect
        self._task: asyncio.Task[None] | None = None
        self._reason = f"connecting to {self._where}"
        self._closing = False
        self._up = False  # connected and the service's queues and consumers set up
        self.connection: AbstractRobustConnection | None = None
        self.channels: list[AbstractRobustChannel] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_until_up(), name=f"{self._service}-broker-connect")

    async def ready(self) -> None:
        """Wait until the first connection is up and the service's topology is declared."""
        assert self._task is not None, "start() first"
        await asyncio.shield(self._task)

    async def channel(self, prefetch: int | None = None) -> AbstractRobustChannel:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        if prefetch is not None:
            await channel.set_qos(prefetch_count=prefetch)
        self.channels.append(channel)
        return channel

    def problem(self) -> str | None:
        """Why the service cannot do its work now, or None when it can."""
        if self.connection is None or not self._up:
            return self._reason
        if not self.connection.connected.is_set():
            return f"connection to {self._where} lost ({self._reason}); reconnecting"
        closed = sum(channel.is_closed for channel in self.channels)
        if closed:
            return f"{closed} broker channel(s) closed; reopening"
        return None

    async def _connect_until_up(self) -> None:
        delay = 0.5
        while True:
            try:
                connection = await aio_pika.connect_robust(
                    self._url,
                    timeout=5,
                    reconnect_interval=1,
                    client_properties={"connection_name": self._service},
                    connection_class=CoalescingRobustConnection,
                )
            except ProbableAuthenticationError:
                reason = (
                    f"{self._where} refused the login of user {self._user!r} (ACCESS_REFUSED): "
                    "check the user and password in AMQP_URL"
                )
            except (OSError, AMQPError, asyncio.TimeoutError) as exc:
                reason = f"{self._where} is not reachable: {exc or type(exc).__name__}"
            else:
                try:
                    self.connection = connection
                    await self._on_connect(connection)
                except (OSError, AMQPError, asyncio.TimeoutError) as exc:
                    reason = f"connected to {self._where} but could not set up queues: {exc}"
                    self.connection, self.channels = None, []
                    await connection.close()
                else:
                    connection.close_callbacks.add(self._on_lost)
                    connection.reconnect_callbacks.add(self._on_reconnect)
                    self._up = True
                    log.info("connected to %s as %s", self._where, self._service)
                    return
            if reason != self._reason:
                log.warning("%s; retrying", reason)
            self._reason = reason
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_lost(self, _connection: object, exc: BaseException | None) -> None:
        if self._closing:
            return
        self._reason = (str(exc) or type(exc).__name__) if exc else "closed by the broker"
        log.warning("lost connection to %s: %s", self._where, self._reason)

    def _on_reconnect(self, _connection: object) -> None:
        BROKER_RECONNECTS.inc()
        log.info("reconnected to %s", self._where)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.connection is not None:
            await self.connection.close()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: where, what, and the sample id it carries."""

    queue: str
    body: bytes
    message_id: str
    headers: dict[str, str] | None = None


async def _send(channel: aiormq.Channel, messages: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
    """Queue every message as one write on the channel; return each one's confirmation future.

    aiormq's ``basic_publish`` sends one message per call, each taking the channel lock and a
    turn of the event loop; this does what it does (delivery tags, confirmation futures,
    mandatory-return bookkeeping) for a whole batch under one lock and one queued frame.
    """
    assert channel.publisher_confirms, "a ConfirmedPublisher needs a channel with publisher confirms"
    frames: list[Any] = []
    confirmations: list[asyncio.Future[Any]] = []
    async with channel.lock:
        first_tag = channel.delivery_tag + 1
        try:
            for message in messages:
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirmation = channel.create_future()
                channel.confirmations[tag] = confirmation
                # A Basic.Return names the message by its message_id: this maps it to the tag.
                channel.message_id_delivery_tag[message.message_id] = tag
                confirmation.add_done_callback(partial(_forget_message_id, channel, message.message_id, tag))
                confirmations.append(confirmation)
                properties = Basic.Properties(
                    delivery_mode=PERSISTENT,
                    content_type="application/json",
                    message_id=message.message_id,
                    headers=message.headers,
                )
                frames.append(Basic.Publish(exchange="", routing_key=message.queue, mandatory=True))
                frames.append(ContentHeader(properties=properties, body_size=len(message.body)))
                step = channel.max_content_size
                frames.extend(ContentBody(message.body[at : at + step]) for at in range(0, len(message.body), step))
            await channel.write_queue.put(ChannelFrame.marshall(frames=frames, channel_number=channel.number))
        except BaseException:
            # Nothing reached the broker: give the delivery tags back, as aiormq does.
            for tag in range(first_tag, channel.delivery_tag + 1):
                channel.confirmations.pop(tag, None)
            channel.delivery_tag = first_tag - 1
            for confirmation in confirmations:
                confirmation.cancel()
            raise
    return confirmations


def _forget_message_id(channel: aiormq.Channel, message_id: str, tag: int, _done: object) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]


class ConfirmedPublisher:
    """Persistent publishes that return only once the broker has confirmed them.

    A publish that fails (connection lost, nack, return, timeout) is retried until
    confirmed: a lost confirm may mean the message did arrive, so consumers must be
    idempotent by id. A batch goes out in one write, its confirms pipelined.
    """

    def __init__(self, channel: AbstractRobustChannel, timeout_s: float) -> None:
        self._channel = channel
        self._timeout_s = timeout_s
        self._last_warning = 0.0
        self._unreported = 0

    def _warn_retry(self, count: int, queue: str, problem: str) -> None:
        # During an outage every in-flight publish fails at once: say so once every few seconds.
        self._unreported += count
        now = time.monotonic()
        if now - self._last_warning >= 5:
            log.warning(
                "%d publish(es) not confirmed (last: to %s, %s); retrying until confirmed",
                self._unreported, queue, problem,
            )
            self._last_warning, self._unreported = now, 0

    async def publish(self, queue: str, body: bytes, *, message_id: str, headers: dict[str, str] | None = None) -> None:
        await self.publish_many([Outgoing(queue, body, message_id, headers)])

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish every message; return once the broker has confirmed them all."""
        pending = list(messages)
        delay = 0.05
        while pending:
            try:
                channel = await self._channel.get_underlay_channel()
                confirmations = await _send(channel, pending)
            except Exception as exc:  # noqa: BLE001 - a closed or closing channel: retry on the next one
                failed, problem = pending, str(exc) or type(exc).__name__
            else:
                failed, problem = await self._unconfirmed(pending, confirmations)
            confirmed = collections.Counter(message.queue for message in pending) - collections.Counter(m.queue for m in failed)
            for queue, count in confirmed.items():
                MESSAGES_PUBLISHED.labels(queue=queue).inc(count)
            if not failed:
                return
            for queue, count in collections.Counter(message.queue for message in failed).items():
                PUBLISH_RETRIES.labels(queue=queue).inc(count)
            self._warn_retry(len(failed), failed[-1].queue, problem)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            pending = failed

    async def _unconfirmed(
        self, messages: list[Outgoing], confirmations: list[asyncio.Future[Any]]
    ) -> tuple[list[Outgoing], str]:
        """Wait (up to the timeout) for the confirms; the messages without a Basic.Ack, and why."""
        await asyncio.wait(confirmations, timeout=self._timeout_s)
        failed: list[Outgoing] = []
        problem = ""
        for message, confirmation in zip(messages, confirmations, strict=True):
            if not confirmation.done():
                confirmation.cancel()  # a late confirm for it is ignored; the message goes again
                problem = f"no confirm within {self._timeout_s:g} s"
            elif confirmation.cancelled():
                problem = "channel closed"
            elif (exc := confirmation.exception()) is not None:
                problem = str(exc) or type(exc).__name__
                if isinstance(exc, PublishError):
                    problem = f"the broker returned it ({problem}): is the queue declared?"
            elif isinstance(confirmation.result(), Basic.Ack):
                continue
            else:
                problem = f"the broker answered {confirmation.result()!r}"
            failed.append(message)
        return failed, problem


def describe_validation_error(exc: ValidationError) -> str:
    """One short line for the x-dlq-reason header: the first problems, where and what."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


class QueueConsumer(Generic[M]):
    """Consumes one queue: validates each delivery, dead-letters bad ones, hands good ones on.

    The handler receives the parsed message and the delivery, and settles the delivery
    itself once its effect is durable. A handler that raises gets the delivery requeued
    once; if it fails again on redelivery, the message is dead-lettered rather than
    looping forever.
    """

    def __init__(
        self,
        queue: str,
        schema: type[M],
        handler: Callable[[M, AbstractIncomingMessage], Awaitable[None]],
        dead_letters: ConfirmedPublisher,
    ) -> None:
        self.queue = queue
        self._schema = schema
        self._handler = handler
        self._dead_letters = dead_letters
        self._in_flight: set[asyncio.Task[None]] = set()
        # Delivery tags received and not yet settled, per channel: an ack with multiple=True
        # is sent only when it covers exactly the deliveries being acked.
        self._unsettled: dict[object, set[int]] = {}
        self._amqp_queue: AbstractRobustQueue | None = None
        self._tag: str | None = None
        self.dead_lettered = 0
        self._consumed = MESSAGES_CONSUMED.labels(queue=queue)
        self._handle_seconds = HANDLE_SECONDS.labels(queue=queue)

    async def start(self, channel: AbstractRobustChannel) -> None:
        self._amqp_queue = await declare_queue(channel, self.queue)
        self._tag = await self._amqp_queue.consume(self._on_delivery)

    async def _on_delivery(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            self._unsettled.setdefault(message.channel, set()).add(message.delivery_tag)
        except ChannelInvalidStateError:
            return  # its channel closed as it arrived: the broker redelivers it
        self._in_flight.add(task)
        try:
            with self._handle_seconds.time():
                await self._handle(message)
        finally:
            self._in_flight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        if len(message.body) > MAX_MESSAGE_BYTES:
            await self.dead_letter(message, f"message of {len(message.body)} bytes exceeds {MAX_MESSAGE_BYTES}")
            return
        try:
            parsed = self._schema.model_validate_json(message.body)
        except ValidationError as exc:
            await self.dead_letter(message, describe_validation_error(exc))
            return
        self._consumed.inc()
        try:
            await self._handler(parsed, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if message.redelivered:
                log.exception("handling %s from %s failed again; dead-lettering it", parsed.id, self.queue)
                await self.dead_letter(message, f"handler failed twice: {type(exc).__name__}: {exc}")
            else:
                log.exception("handling %s from %s failed; requeueing it once", parsed.id, self.queue)
                await self.settle([message], requeue=True)

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Move a delivery to ``<queue>.dlq`` with the reason; ack it only once that is confirmed."""
        log.warning("dead-lettering a message from %s: %s", self.queue, reason)
        await self._dead_letters.publish(
            dlq_name(self.queue),
            message.body,
            message_id=message.message_id or "",
            headers={"x-dlq-reason": reason[:1000], "x-original-queue": self.queue},
        )
        MESSAGES_DEAD_LETTERED.labels(queue=self.queue).inc()
        self.dead_lettered += 1
        await self.settle([message])

    async def settle(self, messages: Sequence[AbstractIncomingMessage], *, requeue: bool | None = None) -> None:
        """Ack (or, with ``requeue`` given, nack) deliveries of this consumer, all in one write.

        Acks become a single ``multiple=True`` ack per channel when no other unsettled
        delivery of that channel has a lower tag (one being dead-lettered, say): acking it
        by accident could lose it.
        """
        by_channel: dict[object, list[AbstractIncomingMessage]] = {}
        for message in messages:
            try:
                by_channel.setdefault(message.channel, []).append(message)
            except ChannelInvalidStateError:  # its channel closed: the broker redelivers it
                continue
        settling = []
        for channel, group in by_channel.items():
            unsettled = self._unsettled.get(channel, set())
            tags = {message.delivery_tag for message in group}
            top = max(tags)
            if requeue is None and len(group) > 1 and all(tag in tags for tag in unsettled if tag <= top):
                settling.append(_ack_up_to(channel, top))
            else:
                settling.extend(settle(message, requeue=requeue) for message in group)
            unsettled -= tags
        self._forget_closed_channels()
        await asyncio.gather(*settling)

    def _forget_closed_channels(self) -> None:
        for channel in [channel for channel in self._unsettled if getattr(channel, "is_closed", False)]:
            del self._unsettled[channel]

    async def pause(self) -> None:
        """Stop taking deliveries; what is unacked stays with us until settled."""
        if self._amqp_queue is not None and self._tag is not None:
            tag, self._tag = self._tag, None
            try:
                await self._amqp_queue.cancel(tag)
            except Exception:  # noqa: BLE001 - channel already gone: the broker requeues what we held
                pass

    async def resume(self) -> None:
        if self._amqp_queue is not None and self._tag is None:
            self._tag = await self._amqp_queue.consume(self._on_delivery)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking deliveries and let the ones in hand finish (or stay unacked)."""
        await self.pause()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace_s)
