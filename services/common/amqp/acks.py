"""Settling deliveries: which acks and nacks (``AckPlanner``, no I/O), and sending them.

A batch's acks are folded into one ``multiple=True`` ack per channel (one frame instead of
hundreds, docs/performance.md) only when that ack covers exactly the batch: never a delivery of
the channel received before and still unsettled — one being dead-lettered, say, which would be
lost if the service died before its copy in the DLQ was confirmed.
"""

import asyncio
import logging
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiormq.abc import AbstractChannel

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Hashable)  # a channel (aiormq's; anything hashable to the planner)


@dataclass(frozen=True, slots=True)
class Settlement(Generic[C]):
    """One ack or nack frame: of ``tag`` on ``channel``, or with ``multiple`` of every delivery up to it."""

    channel: C
    tag: int
    multiple: bool = False
    requeue: bool | None = None  # None: an ack; else a nack, back to the queue or not


class AckPlanner(Generic[C]):
    """The delivery tags received and not yet settled, per channel, and how to settle some of them."""

    def __init__(self) -> None:
        self._unsettled: dict[C, set[int]] = {}

    def received(self, channel: C, tag: int) -> None:
        self._unsettled.setdefault(channel, set()).add(tag)

    def plan(self, deliveries: Iterable[tuple[C, int]], *, requeue: bool | None = None) -> list[Settlement[C]]:
        """The frames that settle ``deliveries`` (channel, tag): an ack of them (``requeue`` None),
        else a nack each. Acks of several deliveries become one ``multiple`` ack per channel when no
        other unsettled delivery of that channel has a lower tag. They count as settled from now."""
        by_channel: dict[C, list[int]] = {}
        for channel, tag in deliveries:
            by_channel.setdefault(channel, []).append(tag)
        settlements: list[Settlement[C]] = []
        for channel, tags in by_channel.items():
            unsettled = self._unsettled.get(channel, set())
            settling = set(tags)
            top = max(settling)
            if requeue is None and len(tags) > 1 and all(tag in settling for tag in unsettled if tag <= top):
                settlements.append(Settlement(channel, top, multiple=True))
            else:
                settlements.extend(Settlement(channel, tag, requeue=requeue) for tag in tags)
            unsettled -= settling
        return settlements

    def forget(self, channel: C) -> None:
        """``channel`` closed: the broker has taken back what it had delivered on it."""
        self._unsettled.pop(channel, None)

    @property
    def channels(self) -> list[C]:
        return list(self._unsettled)


async def send(settlements: Sequence[Settlement[AbstractChannel]]) -> None:
    """Send each frame, without waiting for it to be written, tolerating a channel that died meanwhile.

    A delivery whose channel closed is delivered again by the broker; the consumers are
    idempotent by id, so a lost ack loses nothing.
    """
    await asyncio.gather(*(_send(settlement) for settlement in settlements))


async def _send(settlement: Settlement[AbstractChannel]) -> None:
    channel, tag = settlement.channel, settlement.tag
    try:
        if settlement.requeue is None:
            await channel.basic_ack(tag, multiple=settlement.multiple, wait=False)
        else:
            await channel.basic_nack(tag, requeue=settlement.requeue, wait=False)
    except Exception as exc:  # noqa: BLE001 - aiormq fails a send on a dying channel with a bare Exception
        # The lost connection is logged once by BrokerLink; each delivery it takes down is not news.
        log.debug("could not settle delivery %s (%r); the broker will redeliver it", tag, exc)
