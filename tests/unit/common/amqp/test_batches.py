"""next_batch: what is waiting, up to the size, and never a wait for a batch to fill."""

import asyncio

import pytest

from services.common.amqp.batches import next_batch


@pytest.mark.parametrize("size", [1, 3])
def test_next_batch_takes_what_is_waiting_up_to_the_size(size: int) -> None:
    async def scenario() -> list[int]:
        inbox: asyncio.Queue[int] = asyncio.Queue()
        for n in range(5):
            inbox.put_nowait(n)
        return await next_batch(inbox, max_size=size, window_s=0.001)

    assert asyncio.run(scenario()) == list(range(size))


def test_a_lone_item_is_a_batch_once_the_window_has_passed() -> None:
    async def scenario() -> list[int]:
        inbox: asyncio.Queue[int] = asyncio.Queue()
        inbox.put_nowait(7)
        return await asyncio.wait_for(next_batch(inbox, max_size=500, window_s=0.001), 5)

    assert asyncio.run(scenario()) == [7]
