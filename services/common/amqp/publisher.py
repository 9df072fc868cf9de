"""Persistent publishes that return only once the broker has confirmed them."""

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aio_pika.abc import AbstractRobustChannel
from aio_pika.exceptions import DeliveryError, PublishError
from pamqp.commands import Basic

from services.common.amqp import fastpath
from services.common.amqp.instruments import MESSAGES_PUBLISHED, PUBLISH_RETRIES, PUBLISHER_CHANNELS_RENEWED
from services.common.amqp.outgoing import Outgoing

__all__ = ["ConfirmedPublisher", "Outgoing", "Publisher"]

log = logging.getLogger(__name__)


# Told, after each round of a publish_many, the messages the broker confirmed in it (a caller that
# publishes several callers' messages together answers each caller as soon as its own are confirmed).
Confirmed = Callable[[Sequence[Outgoing]], None]


class Publisher(Protocol):
    """What services and consumers publish through (a ConfirmedPublisher; a recorder in tests)."""

    async def publish_many(self, messages: Sequence[Outgoing], confirmed: Confirmed | None = None) -> None: ...


# Rounds in a row in which the broker refused a publish on one channel (nacked it, or sent no
# confirm in time) and confirmed none, before the publisher opens a new channel.
REFUSED_STREAK = 3

Renew = Callable[[AbstractRobustChannel], Awaitable[AbstractRobustChannel]]


class ConfirmedPublisher:
    """Persistent publishes that return only once the broker has confirmed them.

    A publish that fails (connection lost, nack, return, timeout) is retried until
    confirmed: a lost confirm may mean the message did arrive, so consumers must be
    idempotent by id. A batch goes out in one write, its confirms pipelined.

    A channel can stay refused while the broker is fine: after the node leading a quorum queue
    is killed, a channel that aio-pika reopened on a surviving node at once was measured getting
    every publish nacked for over 43 s, while a new channel was confirmed at once. So after
    ``REFUSED_STREAK`` rounds in a row refused on one channel and none confirmed, ``renew``
    (when given) replaces the channel with a new one, and the publishes go on there.
    """

    def __init__(self, channel: AbstractRobustChannel, timeout_s: float, renew: Renew | None = None) -> None:
        self._channel = channel
        self._timeout_s = timeout_s
        self._renew = renew
        self._renewing = asyncio.Lock()
        self._refused_rounds = 0  # on self._channel, in a row, with no confirm between
        self._last_warning = 0.0
        self._unreported = 0
        self.renewals = 0

    @property
    def channel(self) -> AbstractRobustChannel:
        return self._channel

    async def publish_many(self, messages: Sequence[Outgoing], confirmed: Confirmed | None = None) -> None:
        """Publish every message; return once the broker has confirmed them all. ``confirmed``, if
        given, is told after each round which messages the broker confirmed in it (before the retry
        of the others)."""
        pending = list(messages)
        delay = 0.05
        while pending:
            robust_channel = self._channel
            refused = False
            try:
                channel = await robust_channel.get_underlay_channel()
                confirmations = await fastpath.publish(channel, pending)
            except Exception as exc:  # noqa: BLE001 - a closed or closing channel: retry on the next one
                failed, problem = pending, str(exc) or type(exc).__name__
            else:
                failed, problem, refused = await self._unconfirmed(pending, confirmations)
            _count(MESSAGES_PUBLISHED, pending, minus=failed)
            if len(failed) < len(pending):
                self._refused_rounds = 0
                if confirmed is not None:
                    confirmed(_without(pending, failed))
            if not failed:
                return
            _count(PUBLISH_RETRIES, failed)
            self._warn_retry(len(failed), failed[-1].queue, problem)
            if refused and len(failed) == len(pending) and robust_channel is self._channel:
                self._refused_rounds += 1
                if self._refused_rounds >= REFUSED_STREAK and self._renew is not None:
                    await self._renew_channel(robust_channel, problem)
                    pending, delay = failed, 0.05
                    continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            pending = failed

    async def _renew_channel(self, stuck: AbstractRobustChannel, problem: str) -> None:
        async with self._renewing:
            if stuck is not self._channel:
                return  # another publish renewed it meanwhile
            assert self._renew is not None
            log.warning(
                "the broker refused %d publish rounds in a row on this channel (last: %s); opening a new channel",
                self._refused_rounds,
                problem,
            )
            try:
                self._channel = await self._renew(stuck)
            except Exception as exc:  # noqa: BLE001 - the connection is going too: its reconnect takes over
                log.warning("could not open a new channel (%s); retrying on the old one", exc)
                return
            finally:
                self._refused_rounds = 0
            self.renewals += 1
            PUBLISHER_CHANNELS_RENEWED.inc()

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
    ) -> tuple[list[Outgoing], str, bool]:
        """Wait (up to the timeout) for the confirms; the messages without a Basic.Ack, why, and
        whether the broker refused any (a nack or no confirm in time, on a channel still open)."""
        await asyncio.wait(confirmations, timeout=self._timeout_s)
        failed: list[Outgoing] = []
        problem = ""
        refused = False
        for message, confirmation in zip(messages, confirmations, strict=True):
            if not confirmation.done():
                confirmation.cancel()  # a late confirm for it is ignored; the message goes again
                problem = f"no confirm within {self._timeout_s:g} s"
                refused = True
            elif confirmation.cancelled():
                problem = "channel closed"
            elif (exc := confirmation.exception()) is not None:
                problem = str(exc) or type(exc).__name__
                if isinstance(exc, PublishError):
                    problem = f"the broker returned it ({problem}): is the queue declared?"
                elif isinstance(exc, DeliveryError):
                    refused = True  # a Basic.Nack
            elif isinstance(confirmation.result(), Basic.Ack):
                continue
            else:
                problem = f"the broker answered {confirmation.result()!r}"
                refused = True
            failed.append(message)
        return failed, problem, refused


def _without(messages: list[Outgoing], failed: list[Outgoing]) -> list[Outgoing]:
    if not failed:
        return messages
    left_out = {id(message) for message in failed}
    return [message for message in messages if id(message) not in left_out]


def _count(counter: Any, messages: Sequence[Outgoing], minus: Sequence[Outgoing] = ()) -> None:
    by_queue = collections.Counter(message.queue for message in messages)
    by_queue.subtract(message.queue for message in minus)
    for queue, count in by_queue.items():
        if count:
            counter.labels(queue=queue).inc(count)
