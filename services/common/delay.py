"""The demo's label delay (LABEL_DELAY_S): what it says, drawing a delay, and which delay queue holds a
label that long. No I/O.

A spec is ``0`` (no delay), a number of seconds (``8``: every label 8 s late), ``exp:MEAN``
(exponentially distributed, mean MEAN seconds, capped at ``EXP_CAP`` means) or ``uniform:LOW:HIGH``.

The labels wait on the broker, in delay queues whose messages expire into ``y_true``. RabbitMQ
expires a message only at the head of its queue, so a label behind a longer-delayed one waits for it.
One queue is exact for a fixed delay (first in, first out, all equally long); for a distribution each
label goes to the queue of its *bucket*: delays between two consecutive powers of ``BUCKET_RATIO``
seconds. A label is then never early (its own expiration is its delay) and late by less than its
bucket's width, ``BUCKET_RATIO - 1`` = 19 % of its delay at most; docs/own-model.md has the figures
measured. Buckets are a fixed grid (their names do not depend on the spec), so a label published
under one spec still expires in its queue after a restart under another.
"""

import math
import random
from dataclasses import dataclass
from typing import Literal

BUCKET_RATIO = 2**0.25
# RabbitMQ's per-message expiration is at most 2^32 - 1 ms (about 49 days).
MAX_DELAY_S = (2**32 - 1) / 1000
EXP_CAP = 20  # an exp:MEAN delay is at most 20 means (a draw beyond it has probability 2e-9)
# Delays below this share the first bucket (late by less than this).
SMALLEST_BUCKET_S = 0.1
SPEC_HELP = "give seconds (8), exp:MEAN (exponential, e.g. exp:30) or uniform:LOW:HIGH (e.g. uniform:5:60)"


class DelaySpecError(ValueError):
    """A LABEL_DELAY_S that is not a delay; the message says what is wrong and what is expected."""


DelayKind = Literal["fixed", "exp", "uniform"]


@dataclass(frozen=True)
class LabelDelay:
    kind: DelayKind
    low: float  # fixed: the delay; exp: the mean; uniform: the lower bound
    high: float  # fixed: the delay; exp: the cap; uniform: the upper bound

    @classmethod
    def parse(cls, spec: str) -> "LabelDelay":
        try:
            return cls._parse(spec.strip().lower())
        except DelaySpecError as exc:
            raise DelaySpecError(f"LABEL_DELAY_S={spec!r}: {exc}; {SPEC_HELP}") from None

    @classmethod
    def _parse(cls, text: str) -> "LabelDelay":
        name, _, rest = text.partition(":")
        parts = rest.split(":")
        if not rest and name not in ("exp", "uniform"):
            delay = _seconds(name, "the delay")
            return cls("fixed", delay, delay)
        if name == "exp" and len(parts) == 1:
            mean = _seconds(parts[0], "the mean")
            if mean == 0:
                raise DelaySpecError("the mean must be above 0")
            return cls("exp", mean, min(EXP_CAP * mean, MAX_DELAY_S))
        if name == "uniform" and len(parts) == 2:
            low, high = _seconds(parts[0], "LOW"), _seconds(parts[1], "HIGH")
            if high < low:
                raise DelaySpecError(f"HIGH ({high:g}) is below LOW ({low:g})")
            return cls("uniform", low, high)
        raise DelaySpecError(f"{name!r} is not a delay")

    @property
    def off(self) -> bool:
        return self.kind == "fixed" and self.high == 0

    def draw(self, rng: random.Random) -> float:
        """One label's delay, in seconds."""
        if self.kind == "fixed":
            return self.low
        if self.kind == "exp":
            return min(rng.expovariate(1 / self.low), self.high)
        return rng.uniform(self.low, self.high)

    def buckets(self) -> list[int]:
        """Every bucket a drawn delay can fall in (what a publisher declares)."""
        if self.off:
            return []
        smallest = self.low if self.kind in ("fixed", "uniform") else 0.0
        return list(range(bucket_of(smallest), bucket_of(self.high) + 1))


def _seconds(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DelaySpecError(f"{what} {text!r} is not a number of seconds") from None
    if not (0 <= value <= MAX_DELAY_S):
        raise DelaySpecError(f"{what} must be between 0 and {MAX_DELAY_S:g} s (RabbitMQ's longest expiration)")
    return value


def bucket_of(delay_s: float) -> int:
    """The bucket of a delay: k for delays in [BUCKET_RATIO^k, BUCKET_RATIO^(k+1)) seconds; delays
    below SMALLEST_BUCKET_S share the lowest one."""
    return math.floor(math.log(max(delay_s, SMALLEST_BUCKET_S), BUCKET_RATIO) + 1e-9)


def bucket_start_s(bucket: int) -> float:
    """The shortest delay of a bucket (0 for the lowest one)."""
    return 0.0 if bucket <= bucket_of(SMALLEST_BUCKET_S) else BUCKET_RATIO**bucket


def expiration_ms(delay_s: float) -> int:
    """A delay as RabbitMQ's per-message ``expiration`` (whole milliseconds, rounded up: never early)."""
    return max(0, math.ceil(delay_s * 1000 - 1e-6))
