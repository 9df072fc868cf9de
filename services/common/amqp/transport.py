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
connection's ``kwargs`` to aiormq, so a small ``RobustConnection`` subclass (passed as
``connect_robust(..., connection_class=CoalescingRobustConnection)``) sets it there.
"""

import asyncio
from typing import Any

import aio_pika
import aiormq
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

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


class CoalescingTransportFactory(aiormq.TransportFactory):
    """aiormq's TCP/TLS connection, with a :class:`CoalescingTransport` under its writer."""

    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ssl_context_provider = kwargs.pop("ssl_context_provider", None)
        ssl = await ssl_context_provider.get_context() if url.scheme == "amqps" and ssl_context_provider else None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        assert url.host is not None and url.port is not None, f"aiormq completes the URL with its port: {url}"
        try:
            transport, _ = await loop.create_connection(lambda: protocol, url.host, url.port, ssl=ssl, **kwargs)
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        writer = asyncio.StreamWriter(CoalescingTransport(transport, loop), protocol, reader, loop)
        return reader, writer


class CoalescingRobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection whose every (re)connection uses the coalescing transport."""

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        super().__init__(url, loop=loop, **kwargs)
        self.kwargs["transport_factory"] = CoalescingTransportFactory()
