"""Batches from the consumer's inbox: as large as what is waiting, without waiting for a batch to fill."""

import asyncio
from typing import TypeVar

T = TypeVar("T")

BATCH_MAX = 500
# A quiet pipeline must not wait for a batch to fill: after the first delivery, wait at most this.
BATCH_WINDOW_S = 0.002


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
