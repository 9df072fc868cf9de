"""Drawing samples from the diabetes dataset, and giving each a unique id. No I/O."""

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.common.messages import format_sample_id


@dataclass(frozen=True)
class Sample:
    id: str
    ts: float
    features: list[float]
    label: float


class SampleIdClock:
    """Ids in the seed's timestamp format, strictly increasing, so never shared by two samples.

    Two samples drawn within one microsecond (a burst) would get the same wall-clock
    timestamp; the clock then moves on by one microsecond instead.
    """

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._last_us = 0

    def next(self) -> tuple[str, float]:
        epoch_us = max(round(self._now() * 1_000_000), self._last_us + 1)
        self._last_us = epoch_us
        return format_sample_id(epoch_us), epoch_us / 1_000_000


class DiabetesSampler:
    """Random rows of a feature matrix with their targets."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, seed: int | None = None) -> None:
        if features.ndim != 2 or targets.ndim != 1 or len(features) != len(targets) or len(features) == 0:
            raise ValueError(
                f"need a non-empty 2-D feature matrix and one target per row, got {features.shape} and {targets.shape}"
            )
        self._features = features.astype(float)
        self._targets = targets.astype(float)
        self._rng = np.random.default_rng(seed)
        self._clock = SampleIdClock()

    @classmethod
    def diabetes(cls, seed: int | None = None) -> "DiabetesSampler":
        from sklearn.datasets import load_diabetes  # ships with scikit-learn: no download

        features, targets = load_diabetes(return_X_y=True)
        return cls(features, targets, seed)

    def draw(self) -> Sample:
        row = int(self._rng.integers(len(self._features)))
        sample_id, ts = self._clock.next()
        return Sample(sample_id, ts, self._features[row].tolist(), float(self._targets[row]))
