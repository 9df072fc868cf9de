"""The failure rule: what follows a handler that raised."""

import pytest

from services.common.amqp.failure import HandBack, Then, Verdict, after_failure


@pytest.mark.parametrize(
    ("exc", "batch_size", "redelivered", "verdict"),
    [
        (HandBack("the disk is full"), 500, False, Verdict(Then.HAND_BACK, "the disk is full")),
        (HandBack("read-only"), 1, True, Verdict(Then.HAND_BACK, "read-only")),  # never the message's fault
        (ValueError("bad"), 2, False, Verdict(Then.ONE_AT_A_TIME, "")),
        (ValueError("bad"), 2, True, Verdict(Then.ONE_AT_A_TIME, "")),
        (ValueError("bad"), 1, False, Verdict(Then.REQUEUE, "")),
        (KeyError("x"), 1, True, Verdict(Then.DEAD_LETTER, "handling failed twice: KeyError: 'x'")),
    ],
    ids=["hand back", "hand back alone", "batch", "batch of redeliveries", "alone once", "alone again"],
)
def test_after_failure(exc: Exception, batch_size: int, redelivered: bool, verdict: Verdict) -> None:
    assert after_failure(exc, batch_size, redelivered) == verdict
