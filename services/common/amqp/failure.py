"""The one failure rule, for every service's consumer (no I/O).

- A message that is too large or does not pass its schema goes to ``<queue>.dlq`` at once,
  with the reason in its ``x-dlq-reason`` header.
- The batch handler returns the deliveries it refuses, each with a reason: they are
  dead-lettered. Every other delivery of the batch is acked once the handler has returned,
  that is, once its effect is durable.
- A handler that raises on a batch gets the batch again one message at a time, so one bad
  message does not take its batch with it. A message that fails on its own is requeued once;
  failing again on its redelivery, it is dead-lettered with the error. Never a loop.
- A handler that raises ``HandBack`` says the fault is not in the messages (the disk is full
  or read-only): the batch goes back to the queue unjudged, the consumer stops taking
  deliveries and runs its ``recover`` coroutine, and resumes when that returns.

A dead-lettered delivery is acked only after its copy in the DLQ is confirmed (and no ack with
``multiple=True`` covers it meanwhile: acks.py).
"""

import enum
from dataclasses import dataclass


class HandBack(Exception):
    """Raised by a batch handler when the fault is not in the messages (storage): the batch goes
    back to the queue, and the consumer pauses until its ``recover`` coroutine returns."""


class Then(enum.Enum):
    """What follows a handler that raised."""

    HAND_BACK = "hand the batch back and pause"
    ONE_AT_A_TIME = "handle each message of the batch alone"
    REQUEUE = "requeue the message, once"
    DEAD_LETTER = "dead-letter the message"


@dataclass(frozen=True, slots=True)
class Verdict:
    then: Then
    reason: str  # the hand-back's, or the x-dlq-reason of a dead letter; "" otherwise


def after_failure(exc: Exception, batch_size: int, redelivered: bool) -> Verdict:
    """What follows a handler that raised ``exc`` on a batch of ``batch_size`` (``redelivered``: its
    one message was delivered before)."""
    if isinstance(exc, HandBack):
        return Verdict(Then.HAND_BACK, str(exc))
    if batch_size > 1:
        return Verdict(Then.ONE_AT_A_TIME, "")
    if redelivered:
        return Verdict(Then.DEAD_LETTER, f"handling failed twice: {type(exc).__name__}: {exc}")
    return Verdict(Then.REQUEUE, "")
