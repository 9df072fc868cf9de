"""One ``send()`` per event-loop turn on the AMQP socket, instead of one per frame.

aiormq writes every frame (a publish, an ack) to its socket as soon as it is queued, and
asyncio's transports send at once when their buffer is empty: a burst of N publishes or
acks costs N system calls, and as many wake-ups of the broker. Here the bytes written
during one turn of the event loop are joined and sent together at the end of it (a
``call_soon``), so the same burst costs one. Nothing waits longer than that turn, and
back-pressure still comes from the real transport (it pauses the protocol when its buffer
fills; ``drain()`` honours that).

Know this when reading aiormq: ``StreamWriter.drain()`` on this transport returns before the
bytes reach the socket. A write is only queued here, and handed to the real transport at the
end of the loop turn; ``drain()`` waits only while the real transport has paused the protocol.
So a "drained" frame is not yet on the wire, and nothing here treats it as if it were: a
publish counts as done only when the broker's confirm arrives.

It plugs in through aiormq's public ``TransportFactory`` hook; aio-pika hands its
connection's ``kwargs`` to aiormq, so a small ``RobustConnection`` subclass sets it there. The
socket's StreamReader comes from ``fastpath.stream_reader``: where aiormq allows, the
connection's frames are read fast (fastpath/frames.py).

The same factory fails over across the nodes of a cluster (AMQP_URL listing several): aio-pika
connects to one URL, and every (re)connection of it goes through ``create()``, which tries the
brokers in turn, the first one first, and after a lost connection the next one first. The
AMQP login, the virtual host and the options come from the URL aio-pika holds; the brokers
of one cluster differ only in host and port (Settings checks that).
"""

import asyncio
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

from services.common.amqp import fastpath

STREAM_LIMIT = 2**16  # asyncio.open_connection's default reader limit


class CoalescingTransport(asyncio.Transport):
    """Wraps a transport: writes made in one loop turn leave as one write at its end."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data, self._pending = b"".join(self._pending), []
        if not self._transport.is_closing():
            self._transport.write(data)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self.flush()  # a Connection.Close frame must still leave
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    # Reading, flow control and the protocol stay with the real transport: the protocol was
    # handed that one by create_connection, and StreamWriter calls none of them on this one.


Broker = tuple[str, int]  # host, port


class CoalescingTransportFactory(aiormq.TransportFactory):
    """aiormq's TCP/TLS connection, with a :class:`CoalescingTransport` under its writer,
    to the first of ``brokers`` that accepts it (the URL's own host and port when none are given).

    ``brokers`` are tried in order, starting with the first on the first connection and, on each
    reconnection, with the one after the broker it was connected to: a broker that went away is
    tried last. ``current`` is the broker of the last connection made.
    """

    def __init__(self, brokers: Sequence[Broker] = (), connect_timeout_s: float = 2.0) -> None:
        self.brokers = list(brokers)
        self.connect_timeout_s = connect_timeout_s
        self.current: Broker | None = None
        self._next = 0

    def _order(self, url: URL) -> list[Broker]:
        if not self.brokers:
            assert url.host is not None and url.port is not None, f"aiormq completes the URL with its port: {url}"
            return [(url.host, url.port)]
        return self.brokers[self._next :] + self.brokers[: self._next]

    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ssl_context_provider = kwargs.pop("ssl_context_provider", None)
        ssl = await ssl_context_provider.get_context() if url.scheme == "amqps" and ssl_context_provider else None
        failures = []
        for host, port in self._order(url):
            try:
                async with asyncio.timeout(self.connect_timeout_s if len(self.brokers) > 1 else None):
                    streams = await self._open(host, port, ssl, kwargs)
            except (OSError, TimeoutError) as exc:
                failures.append(f"{host}:{port}: {str(exc) or type(exc).__name__}")
                continue
            self.current = (host, port)
            if self.brokers:
                self._next = (self.brokers.index((host, port)) + 1) % len(self.brokers)
            return streams
        raise AMQPConnectionError("; ".join(failures))

    @staticmethod
    async def _open(host: str, port: int, ssl: Any, kwargs: dict[str, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        reader = fastpath.stream_reader(STREAM_LIMIT, loop)  # its frames read fast, where aiormq allows
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.create_connection(lambda: protocol, host, port, ssl=ssl, **kwargs)
        writer = asyncio.StreamWriter(CoalescingTransport(transport, loop), protocol, reader, loop)
        return reader, writer


class CoalescingRobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection whose every (re)connection uses the coalescing transport,
    failing over across ``brokers`` (host, port) when given.

    Make it directly (``connect_robust`` would copy extra keywords into the URL's query), then
    ``await connection.connect(timeout)``."""

    def __init__(
        self, url: URL, loop: asyncio.AbstractEventLoop | None = None, *, brokers: Sequence[Broker] = (), **kwargs: Any
    ) -> None:
        super().__init__(url, loop=loop, **kwargs)
        self.transport_factory = CoalescingTransportFactory(brokers)
        self.kwargs["transport_factory"] = self.transport_factory

    @property
    def broker(self) -> Broker | None:
        """The host and port of the broker of the last connection made."""
        return self.transport_factory.current
