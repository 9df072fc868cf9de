"""Drawing samples from the diabetes dataset, giving each a unique id, and changing what is drawn
on request (a scenario: shift, scale, noise) to watch drift happen. No I/O."""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from services.common.messages import FEATURE_NAMES, SampleIdClock

__all__ = ["DiabetesSampler", "Sample", "SampleIdClock", "Scenario", "known_feature"]

# A scenario's bounds, in units of a feature's std: beyond them nothing more is learnt, and the
# features stay far inside what model_api accepts.
MAX_SHIFT = 10.0
MAX_SCALE = 10.0
MAX_NOISE = 10.0


@dataclass(frozen=True)
class Sample:
    id: str
    ts: float
    features: list[float]
    label: float


def known_feature(name: str) -> str:
    """``name`` if it is one of the ten diabetes features; else a ValueError listing them."""
    if name not in FEATURE_NAMES:
        raise ValueError(f"unknown feature {name!r}: the features are {', '.join(FEATURE_NAMES)}")
    return name


@dataclass(frozen=True)
class Scenario:
    """A change to the features drawn, each in units of that feature's std over the data:
    ``x → mean + scale·(x − mean) + shift·std + noise·std·N(0, 1)``. The labels do not change:
    the model meets inputs it was not trained on, and its error shows it once the labels come."""

    shift: Mapping[str, float] = field(default_factory=dict)
    scale: Mapping[str, float] = field(default_factory=dict)
    noise: Mapping[str, float] = field(default_factory=dict)
    since: float | None = None  # when it was set (epoch s); None: no scenario

    def __post_init__(self) -> None:
        for what, values, low, high in (
            ("shift", self.shift, -MAX_SHIFT, MAX_SHIFT),
            ("scale", self.scale, 0.0, MAX_SCALE),
            ("noise", self.noise, 0.0, MAX_NOISE),
        ):
            for name, value in values.items():
                known_feature(name)
                if not (math.isfinite(value) and low <= value <= high):
                    raise ValueError(f"{what} of {name} must be between {low:g} and {high:g} (its std units), not {value}")

    @property
    def active(self) -> bool:
        return (
            any(v != 0 for v in self.shift.values())
            or any(v != 1 for v in self.scale.values())
            or any(v != 0 for v in self.noise.values())
        )


class DiabetesSampler:
    """Random rows of a feature matrix (the ten diabetes features) with their targets."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, seed: int | None = None) -> None:
        if features.ndim != 2 or targets.ndim != 1 or len(features) != len(targets) or len(features) == 0:
            raise ValueError(
                f"need a non-empty 2-D feature matrix and one target per row, got {features.shape} and {targets.shape}"
            )
        self._features = features.astype(float)
        self._targets = targets.astype(float)
        self._rng = np.random.default_rng(seed)
        self.clock = SampleIdClock()  # also gives the ids of the callers' own samples: one clock, unique ids
        self.mean = self._features.mean(axis=0)
        self.std = self._features.std(axis=0)  # the unit of a scenario's shift and noise
        self.scenario = Scenario()
        self._shift = self._noise = np.zeros(self._features.shape[1])
        self._scale = np.ones(self._features.shape[1])

    def set_scenario(self, scenario: Scenario) -> None:
        """Draw through ``scenario`` from now on (``Scenario()`` ends it). The callers' own rows
        (POST /samples) are theirs: a scenario changes only what the demo draws."""
        if scenario.active and self._features.shape[1] != len(FEATURE_NAMES):
            width = self._features.shape[1]
            raise ValueError(f"a scenario needs the {len(FEATURE_NAMES)} diabetes features, not {width} columns")
        column = {name: i for i, name in enumerate(FEATURE_NAMES)}

        def vector(values: Mapping[str, float], default: float) -> np.ndarray:
            out = np.full(self._features.shape[1], default)
            for name, value in values.items():
                out[column[name]] = value
            return out

        self._shift = vector(scenario.shift, 0.0) * self.std
        self._scale = vector(scenario.scale, 1.0)
        self._noise = vector(scenario.noise, 0.0) * self.std
        self.scenario = scenario

    @classmethod
    def diabetes(cls, seed: int | None = None) -> "DiabetesSampler":
        from sklearn.datasets import load_diabetes  # ships with scikit-learn: no download

        features, targets = load_diabetes(return_X_y=True)
        return cls(features, targets, seed)

    def draw(self) -> Sample:
        row = int(self._rng.integers(len(self._features)))
        sample_id, ts = self.clock.next()
        features = self._features[row]
        if self.scenario.active:
            noise = self._noise * self._rng.standard_normal(features.size) if self._noise.any() else 0.0
            features = self.mean + self._scale * (features - self.mean) + self._shift + noise
        return Sample(sample_id, ts, features.tolist(), float(self._targets[row]))
