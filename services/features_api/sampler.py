"""Drawing samples from the diabetes dataset, and giving each a unique id. No I/O."""

from dataclasses import dataclass

import numpy as np

from services.common.messages import SampleIdClock

__all__ = ["DiabetesSampler", "Sample", "SampleIdClock"]


@dataclass(frozen=True)
class Sample:
    id: str
    ts: float
    features: list[float]
    label: float


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
        self.clock = SampleIdClock()  # also gives the ids of the callers' own samples: one clock, unique ids

    @classmethod
    def diabetes(cls, seed: int | None = None) -> "DiabetesSampler":
        from sklearn.datasets import load_diabetes  # ships with scikit-learn: no download

        features, targets = load_diabetes(return_X_y=True)
        return cls(features, targets, seed)

    def draw(self) -> Sample:
        row = int(self._rng.integers(len(self._features)))
        sample_id, ts = self.clock.next()
        return Sample(sample_id, ts, self._features[row].tolist(), float(self._targets[row]))
