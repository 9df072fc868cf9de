"""A service's one robust connection to RabbitMQ, what it sets up there, and what /health says of it."""

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ProbableAuthenticationError
from yarl import URL

from services.common.amqp import fastpath
from services.common.amqp.consumer import BatchConsumer
from services.common.amqp.instruments import BROKER_RECONNECTS
from services.common.amqp.publisher import ConfirmedPublisher, Publisher
from services.common.amqp.topology import DelayQueue, declare
from services.common.amqp.transport import CoalescingRobustConnection
from services.common.settings import Settings

log = logging.getLogger(__name__)


class NotConnected(RuntimeError):
    """The broker is not reachable yet; the message says why (what /health says)."""


class Link(Protocol):
    """What a service needs of its broker link (BrokerLink; a stand-in in in-process tests)."""

    @property
    def publisher(self) -> Publisher: ...
    def start(self) -> None: ...
    async def ready(self) -> None: ...
    def problem(self) -> str | None: ...
    async def close(self) -> None: ...


class BrokerLink:
    """The service's one robust connection to RabbitMQ, and what /health says about it.

    The service names the queues it publishes to and hands over its consumers; once
    connected, the link declares those queues, opens one confirmed publishing channel (also
    the consumers' dead-letter channel) and starts each consumer on channels of its own.

    ``start()`` returns at once: the connection is made in the background, retried until
    the broker answers, so the service starts (and /health says why it is not ready)
    while the broker is down. Once connected, aio-pika's robust connection restores
    channels, queues and consumers by itself after a drop.
    """

    def __init__(
        self,
        settings: Settings,
        service: str,
        *,
        publishes: Sequence[str | DelayQueue] = (),
        consumers: Sequence[BatchConsumer] = (),
    ) -> None:
        url = URL(str(settings.AMQP_URL))
        if "heartbeat" not in url.query:
            url = url.update_query(heartbeat=settings.AMQP_HEARTBEAT_S)
        self._url = str(url)
        self._where = f"RabbitMQ at {settings.AMQP_URL.host}:{settings.AMQP_URL.port or 5672}"
        self._user = settings.AMQP_URL.username or "guest"
        self._settings = settings
        self._service = service
        self._publishes = list(publishes)
        self._consumers = list(consumers)
        self._task: asyncio.Task[None] | None = None
        self._reason = f"connecting to {self._where}"
        self._closing = False
        self._up = False  # connected and the service's queues and consumers set up
        self._publisher: ConfirmedPublisher | None = None
        self.connection: AbstractRobustConnection | None = None
        self.channels: list[AbstractRobustChannel] = []

    @property
    def publisher(self) -> ConfirmedPublisher:
        if self._publisher is None or not self._up:
            raise NotConnected(self.problem() or self._reason)
        return self._publisher

    def start(self) -> None:
        fastpath.enlarge_frame_buffer()
        self._task = asyncio.create_task(self._connect_until_up(), name=f"{self._service}-broker-connect")

    async def ready(self) -> None:
        """Wait until the first connection is up and the service's topology is declared."""
        assert self._task is not None, "start() first"
        await asyncio.shield(self._task)

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

    async def _channel(self, prefetch: int | None = None) -> AbstractRobustChannel:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        if prefetch is not None:
            await channel.set_qos(prefetch_count=prefetch)
        self.channels.append(channel)
        return channel

    async def _consumer_channel(self) -> AbstractRobustChannel:
        return await self._channel(prefetch=self._settings.PREFETCH)

    async def _set_up(self) -> None:
        """Declare what the service publishes to, open the publisher, start the consumers."""
        channel = await self._channel()
        for queue in self._publishes:
            await declare(channel, queue)
        self._publisher = ConfirmedPublisher(channel, self._settings.PUBLISH_TIMEOUT_S)
        for consumer in self._consumers:
            await consumer.start(self._consumer_channel, self._publisher)

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
            except (TimeoutError, OSError, AMQPError) as exc:
                reason = f"{self._where} is not reachable: {str(exc) or type(exc).__name__}"
            else:
                try:
                    self.connection = connection
                    await self._set_up()
                except (TimeoutError, OSError, AMQPError) as exc:
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
        """Stop the consumers (letting what they hold finish), then close the connection."""
        self._closing = True
        for consumer in self._consumers:
            await consumer.stop()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.connection is not None:
            await self.connection.close()
