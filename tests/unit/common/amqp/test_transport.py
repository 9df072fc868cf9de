"""CoalescingTransport: what is written in one loop turn leaves in one write, in order."""

import asyncio
from typing import Any

import pytest

from services.common.amqp.transport import CoalescingTransport


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
