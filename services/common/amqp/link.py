"""A service's one robust connection to RabbitMQ, what it sets up there, and what /health says of it."""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from aio_pika.abc import AbstractRobustChannel
from aio_pika.exceptions import AMQPError, ProbableAuthenticationError
from aiormq.exceptions import ChannelPreconditionFailed
from yarl import URL

from services.common.amqp.consumer import BatchConsumer
from services.common.amqp.errors import BROKER_GONE
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
    def details(self) -> dict[str, str]: ...
    async def close(self) -> None: ...


class BrokerLink:
    """The service's one robust connection to RabbitMQ, and what /health says about it.

    The service names the queues it publishes to and hands over its consumers; once
    connected, the link declares those queues, opens one confirmed publishing channel (also
    the consumers' dead-letter channel) and starts each consumer on channels of its own.

    ``start()`` returns at once: the connection is made in the background, retried until
    the broker answers, so the service starts (and /health says why it is not ready)
    while the broker is down. Once connected, aio-pika's robust connection restores
    channels, queues and consumers by itself after a drop. With several brokers in AMQP_URL
    (the nodes of a cluster), each (re)connection goes to the first that answers, the one it
    lost last (services/common/amqp/transport.py); /health names the broker it is on.
    """

    def __init__(
        self,
        settings: Settings,
        service: str,
        *,
        publishes: Sequence[str | DelayQueue] = (),
        consumers: Sequence[BatchConsumer] = (),
    ) -> None:
        brokers = settings.brokers
        url = URL(str(brokers[0]))
        if "heartbeat" not in url.query:
            url = url.update_query(heartbeat=settings.AMQP_HEARTBEAT_S)
        self._url = url
        default_port = 5671 if url.scheme == "amqps" else 5672
        self._brokers = [(broker.host or "localhost", broker.port or default_port) for broker in brokers]
        listed = ", ".join(f"{host}:{port}" for host, port in self._brokers)
        self._where = f"RabbitMQ at {listed}" if len(brokers) == 1 else f"the RabbitMQ cluster at {listed}"
        self._user = brokers[0].username or "guest"
        self._settings = settings
        self._service = service
        self._publishes = list(publishes)
        self._consumers = list(consumers)
        self._task: asyncio.Task[None] | None = None
        self._reason = f"connecting to {self._where}"
        self._closing = False
        self._lost = False  # the outage is said once, until the connection is back
        self._up = False  # connected and the service's queues and consumers set up
        self._publisher: ConfirmedPublisher | None = None
        self.connection: CoalescingRobustConnection | None = None
        self.channels: list[AbstractRobustChannel] = []

    @property
    def publisher(self) -> ConfirmedPublisher:
        # Usable as soon as it exists: a consumer started during the set-up (a service has several) may be
        # handed deliveries before the last one is consuming, and publishes what they give.
        if self._publisher is None:
            raise NotConnected(self.problem() or self._reason)
        return self._publisher

    def start(self) -> None:
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

    def details(self) -> dict[str, str]:
        """What /health adds: the broker (host:port) of the connection, once there is one."""
        broker = self.connection.broker if self.connection is not None else None
        return {} if broker is None else {"broker": f"{broker[0]}:{broker[1]}"}

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
        self._publisher = ConfirmedPublisher(
            await self._publishing_channel(), self._settings.PUBLISH_TIMEOUT_S, renew=self._renew_publishing_channel
        )
        for consumer in self._consumers:
            await consumer.start(self._consumer_channel, self._publisher, self._settings.QUEUE_TYPE)

    async def _publishing_channel(self) -> AbstractRobustChannel:
        channel = await self._channel()
        for queue in self._publishes:
            await declare(channel, queue, self._settings.QUEUE_TYPE)
        return channel

    async def _renew_publishing_channel(self, stuck: AbstractRobustChannel) -> AbstractRobustChannel:
        """A new publishing channel in place of ``stuck`` (which the broker keeps refusing), closed."""
        channel = await self._publishing_channel()
        if stuck in self.channels:
            self.channels.remove(stuck)
        with contextlib.suppress(Exception):
            await stuck.close()
        return channel

    async def _connect_until_up(self) -> None:
        delay = 0.5
        while True:
            try:
                connection = CoalescingRobustConnection(
                    self._url,
                    brokers=self._brokers if len(self._brokers) > 1 else (),
                    reconnect_interval=1,
                    client_properties={"connection_name": self._service},
                )
                try:
                    # Past a broker that is gone, the next one is tried (2 s each at most).
                    await connection.connect(timeout=5 + 2 * (len(self._brokers) - 1))
                except BaseException:
                    await connection.close()
                    raise
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
                except BROKER_GONE as exc:  # the broker went away again while we declared
                    reason = f"connected to {self._where} but could not set up queues: {exc}"
                    if isinstance(exc, ChannelPreconditionFailed):
                        reason += (
                            f" (a queue exists with other arguments: declared by services with another QUEUE_TYPE or "
                            f"METRIC_SHARDS than this one's {self._settings.QUEUE_TYPE} and "
                            f"{self._settings.METRIC_SHARDS}; docs/cluster.md says how to change them)"
                        )
                    self.connection, self.channels, self._publisher = None, [], None
                    await connection.close()
                else:
                    connection.close_callbacks.add(self._on_lost)
                    connection.reconnect_callbacks.add(self._on_reconnect)
                    self._up = True
                    log.info("connected to %s as %s (%s)", self._where, self._service, self._on())
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
        if not self._lost:  # aio-pika calls this again at each failed attempt to reconnect: say it once
            self._lost = True
            log.warning("lost connection to %s: %s; reconnecting", self._where, self._reason)

    def _on_reconnect(self, _connection: object) -> None:
        BROKER_RECONNECTS.inc()
        self._lost = False
        log.info("reconnected to %s (%s)", self._where, self._on())

    def _on(self) -> str:
        return self.details().get("broker", "?")

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
