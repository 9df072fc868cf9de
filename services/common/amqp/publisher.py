"""Persistent publishes that return only once the broker has confirmed them."""

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from aio_pika.abc import AbstractRobustChannel
from aio_pika.exceptions import PublishError
from pamqp.commands import Basic

from services.common.amqp import fastpath
from services.common.amqp.fastpath import Outgoing
from services.common.amqp.instruments import MESSAGES_PUBLISHED, PUBLISH_RETRIES

__all__ = ["ConfirmedPublisher", "Outgoing", "Publisher"]

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What services and consumers publish through (a ConfirmedPublisher; a recorder in tests)."""

    async def publish_many(self, messages: Sequence[Outgoing]) -> None: ...


class ConfirmedPublisher:
    """Persistent publishes that return only once the broker has confirmed them.

    A publish that fails (connection lost, nack, return, timeout) is retried until
    confirmed: a lost confirm may mean the message did arrive, so consumers must be
    idempotent by id. A batch goes out in one write, its confirms pipelined.
    """

    def __init__(self, channel: AbstractRobustChannel, timeout_s: float) -> None:
        self._channel = channel
        self._timeout_s = timeout_s
        self._last_warning = 0.0
        self._unreported = 0

    async def publish(self, queue: str, body: bytes, *, message_id: str, headers: dict[str, str] | None = None) -> None:
        await self.publish_many([Outgoing(queue, body, message_id, headers)])

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish every message; return once the broker has confirmed them all."""
        pending = list(messages)
        delay = 0.05
        while pending:
            try:
                channel = await self._channel.get_underlay_channel()
                confirmations = await fastpath.publish(channel, pending)
            except Exception as exc:  # noqa: BLE001 - a closed or closing channel: retry on the next one
                failed, problem = pending, str(exc) or type(exc).__name__
            else:
                failed, problem = await self._unconfirmed(pending, confirmations)
            _count(MESSAGES_PUBLISHED, pending, minus=failed)
            if not failed:
                return
            _count(PUBLISH_RETRIES, failed)
            self._warn_retry(len(failed), failed[-1].queue, problem)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            pending = failed

    def _warn_retry(self, count: int, queue: str, problem: str) -> None:
        # During an outage every in-flight publish fails at once: say so once every few seconds.
        self._unreported += count
        now = time.monotonic()
        if now - self._last_warning >= 5:
            log.warning(
                "%d publish(es) not confirmed (last: to %s, %s); retrying until confirmed", self._unreported, queue, problem
            )
            self._last_warning, self._unreported = now, 0

    async def _unconfirmed(
        self, messages: list[Outgoing], confirmations: list[asyncio.Future[Any]]
    ) -> tuple[list[Outgoing], str]:
        """Wait (up to the timeout) for the confirms; the messages without a Basic.Ack, and why."""
        await asyncio.wait(confirmations, timeout=self._timeout_s)
        failed: list[Outgoing] = []
        problem = ""
        for message, confirmation in zip(messages, confirmations, strict=True):
            if not confirmation.done():
                confirmation.cancel()  # a late confirm for it is ignored; the message goes again
                problem = f"no confirm within {self._timeout_s:g} s"
            elif confirmation.cancelled():
                problem = "channel closed"
            elif (exc := confirmation.exception()) is not None:
                problem = str(exc) or type(exc).__name__
                if isinstance(exc, PublishError):
                    problem = f"the broker returned it ({problem}): is the queue declared?"
            elif isinstance(confirmation.result(), Basic.Ack):
                continue
            else:
                problem = f"the broker answered {confirmation.result()!r}"
            failed.append(message)
        return failed, problem


def _count(counter: Any, messages: Sequence[Outgoing], minus: Sequence[Outgoing] = ()) -> None:
    by_queue = collections.Counter(message.queue for message in messages)
    by_queue.subtract(message.queue for message in minus)
    for queue, count in by_queue.items():
        if count:
            counter.labels(queue=queue).inc(count)
