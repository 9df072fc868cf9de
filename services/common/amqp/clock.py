"""The time the broker layer waits by: the event loop's, or a test's (no waiting in wall time)."""

import asyncio
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Now, in seconds (only differences mean anything)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""


class LoopClock:
    """The running event loop's clock, and asyncio.sleep."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


LOOP_CLOCK = LoopClock()
