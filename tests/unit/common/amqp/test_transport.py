"""CoalescingTransport: what is written in one loop turn leaves in one write, in order."""

import asyncio
import socket
from typing import Any

import pytest
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

from services.common.amqp.transport import CoalescingTransport, CoalescingTransportFactory


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: Any) -> None:
        assert not self.closing, "written after close"
        self.writes.append(bytes(data))
        self.events.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def get_write_buffer_size(self) -> int:
        return 7


async def one_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_writes_of_one_turn_leave_as_one_write_in_order() -> None:
    async def scenario() -> RecordingTransport:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"publish-1;")
        transport.writelines([b"publish-2;", bytearray(b"ack-3;")])
        transport.write(memoryview(b"ack-4;"))
        assert real.writes == []  # nothing sent until the turn ends
        assert transport.get_write_buffer_size() == 7 + len(b"publish-1;publish-2;ack-3;ack-4;")
        await one_turn()
        transport.write(b"next-turn")
        await one_turn()
        return real

    real = asyncio.run(scenario())
    assert real.writes == [b"publish-1;publish-2;ack-3;ack-4;", b"next-turn"]


def test_close_sends_what_is_pending_first() -> None:
    async def scenario() -> RecordingTransport:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"connection.close")
        transport.close()
        await one_turn()  # the scheduled flush finds nothing left to send
        return real

    real = asyncio.run(scenario())
    assert real.events == ["write", "close"]
    assert real.writes == [b"connection.close"]


def test_abort_drops_what_is_pending() -> None:
    async def scenario() -> RecordingTransport:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"lost")
        transport.abort()
        await one_turn()
        return real

    real = asyncio.run(scenario())
    assert real.events == ["abort"]


def test_nothing_is_written_to_a_transport_that_is_closing() -> None:
    async def scenario() -> RecordingTransport:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"too late")
        real.closing = True  # the peer went away within the turn
        await one_turn()
        return real

    assert asyncio.run(scenario()).writes == []


@pytest.mark.parametrize("name", ["peername", "socket"])
def test_extra_info_comes_from_the_real_transport(name: str) -> None:
    class WithInfo(RecordingTransport):
        def get_extra_info(self, key: str, default: Any = None) -> Any:  # noqa: ARG002 - a transport's signature
            return f"real {key}"

    async def scenario() -> Any:
        return CoalescingTransport(WithInfo(), asyncio.get_running_loop()).get_extra_info(name)

    assert asyncio.run(scenario()) == f"real {name}"


# -- failing over across a cluster's brokers (real sockets on this machine, no broker)


async def _hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def _listening() -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(_hang_up, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_the_first_broker_that_accepts_is_used_and_a_reconnection_starts_after_it() -> None:
    async def scenario() -> list[int]:
        (server_b, b), (server_c, c) = await _listening(), await _listening()
        dead = _closed_port()
        factory = CoalescingTransportFactory([("127.0.0.1", dead), ("127.0.0.1", b), ("127.0.0.1", c)])
        seen = []
        for _ in range(3):
            _reader, writer = await factory.create(URL(f"amqp://guest:guest@127.0.0.1:{dead}/"))
            assert factory.current is not None
            seen.append(factory.current[1])
            writer.close()
            await writer.wait_closed()
        for server in (server_b, server_c):
            server.close()
            await server.wait_closed()
        assert seen[0] == b
        return [b, c, seen[1], seen[2]]

    b, c, second, third = asyncio.run(scenario())
    # The dead first broker is skipped; after b comes c; after c the list wraps past the dead one to b.
    assert (second, third) == (c, b)


def test_no_broker_accepting_is_one_error_naming_each() -> None:
    first, second = _closed_port(), _closed_port()
    factory = CoalescingTransportFactory([("127.0.0.1", first), ("127.0.0.1", second)])
    with pytest.raises(AMQPConnectionError) as refused:
        asyncio.run(factory.create(URL(f"amqp://127.0.0.1:{first}/")))
    assert f"127.0.0.1:{first}" in str(refused.value) and f"127.0.0.1:{second}" in str(refused.value)
    assert factory.current is None
