"""``GroupCommit``: concurrent callers' items handled in one call (a group commit), each caller
answered with its own outcome.

The first item in opens a group; every item given in the same turn of the event loop joins it
(concurrent HTTP requests read in one poll of the sockets all get there in that turn), up to
``max_size``; at the end of the turn the group is handed to ``commit`` in a task of its own, and
the next item opens the next group (groups do not wait for each other). Nothing waits longer than
that turn to be grouped. ``commit`` answers each item by its ``Pending``: ``settle`` with a result,
or ``fail`` with an exception, which the caller's ``submit`` then raises (one item refused fails
only its own caller); an exception out of ``commit`` itself fails every item it left unanswered.

A caller cancelled while it waits (its client went away) leaves the others alone: its ``Pending``
is done, so a commit not yet begun leaves the item out, and one under way answers it into the void.
No I/O here: ``commit`` does it.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True, eq=False)
class Pending(Generic[T, R]):
    """One caller's item in a group, and how ``commit`` answers it."""

    item: T
    future: asyncio.Future[R] = field(repr=False)

    @property
    def waiting(self) -> bool:
        """False once answered, or once its caller stopped waiting (cancelled)."""
        return not self.future.done()

    def settle(self, result: R) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


Commit = Callable[[list[Pending[T, R]]], Awaitable[None]]


class GroupCommit(Generic[T, R]):
    """Items given in one event-loop turn go to one ``commit`` call (the module says how)."""

    def __init__(self, commit: Commit[T, R], max_size: int, size: Callable[[T], int] = lambda _item: 1) -> None:
        self._commit = commit
        self._max_size = max_size
        self._size = size
        self._open: list[Pending[T, R]] = []
        self._open_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.groups = 0  # committed so far, and the items in them: what grouping bought
        self.items = 0

    async def submit(self, item: T) -> R:
        """``item``'s outcome once its group is committed: the result ``commit`` settled it with, or
        the exception it failed it with, raised here."""
        loop = asyncio.get_running_loop()
        pending: Pending[T, R] = Pending(item, loop.create_future())
        size = self._size(item)
        if self._open and self._open_size + size > self._max_size:
            self._flush()  # a full group goes now; this item opens the next
        self._open.append(pending)
        self._open_size += size
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        return await pending.future

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        group = [pending for pending in self._open if pending.waiting]
        self._open, self._open_size = [], 0
        if not group:
            return
        self.groups += 1
        self.items += len(group)
        task = asyncio.get_running_loop().create_task(self._run(group), name="group-commit")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, group: list[Pending[T, R]]) -> None:
        try:
            await self._commit(group)
        except BaseException as exc:  # every item it left unanswered fails with it; a cancel is passed on
            for pending in group:
                pending.fail(exc if isinstance(exc, Exception) else RuntimeError("the group commit was stopped"))
            if not isinstance(exc, Exception):
                raise

    async def close(self) -> None:
        """Stop: the commits under way are cancelled, their callers told so."""
        self._flush()
        for task in list(self._running):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._running, return_exceptions=True)
