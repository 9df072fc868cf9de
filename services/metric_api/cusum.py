"""The MAE alert's sequential change detector: a one-sided CUSUM on the absolute errors, calibrated
from the model's reference rows for a stated false-alarm rate, with hysteresis. No I/O.

Each absolute error is standardised against the reference's errors (``z = (|e| - mean) / std``,
``|target - prediction|`` of the reference rows the sidecar vouches for: the model's errors on data
it was not fitted on). The detector looks for a rise of the mean by ``shift`` (20 %: ``delta`` =
0.2 · mean / std in std units) and, once raised, for the way back:

- up:   ``S+ = max(0, S+ + z - delta/2)``; the alert is raised when ``S+ > h``;
- down (while raised): ``S- = max(0, S- + delta - z - delta/2)``, the same test with the roles of the
  two means swapped; the alert clears when ``S- > h``, and ``S+`` starts again from 0.

So a raised alert stays up until the errors are as convincingly back as they were convincingly up:
no flapping around a line (hysteresis), whatever the batch sizes.

**Calibration.** ``h`` is the smallest threshold whose average run length between false alarms
(ARL0), with errors drawn from the reference's own errors, is at least ``arl0`` rows (10,000 by
default). The ARL of a threshold is computed, not sampled: the CUSUM is a Markov chain on [0, h],
discretised into ``STATES`` cells, whose step is the reference's empirical distribution of ``z``
(Brook & Evans, 1972); ``(I - Q) arl = 1`` gives the run length from 0, and bisection finds ``h``.
The same chain with the errors scaled by ``1 + shift`` gives the delay to expect for that shift
(``arl1``): the bound the measured delays are compared with (docs/monitoring.md).
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SHIFT = 0.20  # the rise of the MAE to detect, relative
ARL0 = 10_000  # rows between false alarms on calm errors, on average, at least
STATES = 400  # cells of the Markov chain the ARL is computed on
MIN_ROWS = 30  # fewer reference errors than this do not make a distribution


class CalibrationError(ValueError):
    """Reference errors that cannot calibrate a detector; the message says why."""


@dataclass(frozen=True)
class Calibration:
    """What the detector compares the errors with, and what that promises."""

    mean: float  # of the reference's absolute errors
    std: float
    rows: int  # reference errors it was made from
    shift: float  # relative rise of the mean to detect
    k: float  # the allowance: half the shift in std units
    h: float  # the decision threshold, in std units
    arl0: float  # rows between false alarms on calm errors (computed at h)
    arl1: float  # rows to detect the shift, on average, from S+ = 0 (computed at h)

    def to_json(self) -> dict[str, float]:
        return {
            "mean": self.mean,
            "std": self.std,
            "rows": self.rows,
            "shift": self.shift,
            "k": self.k,
            "h": self.h,
            "arl0": self.arl0,
            "arl1": self.arl1,
        }


def run_length(z: np.ndarray, k: float, h: float, states: int = STATES) -> float:
    """The average number of steps for ``S = max(0, S + z - k)`` to pass ``h`` from 0, with ``z``
    drawn from the empirical distribution of ``z`` (Brook & Evans' Markov chain on ``states`` cells)."""
    z = np.sort(np.asarray(z, dtype=float))
    width = h / states
    centres = (np.arange(states) + 0.5) * width  # cell i holds S in [i·w, (i+1)·w); 0 itself is in cell 0
    centres[0] = 0.0
    edges = np.arange(1, states + 1) * width  # upper edge of each cell: passing the last one is the alarm
    # P(next cell <= j | now in cell i) = P(centre_i + z - k < edge_j) = share of z below edge_j - centre_i + k
    below = np.searchsorted(z, edges[None, :] - centres[:, None] + k, side="left") / len(z)
    q = np.diff(np.concatenate([np.zeros((states, 1)), below], axis=1), axis=1)
    arl = np.linalg.solve(np.eye(states) - q, np.ones(states))
    return float(arl[0])


def calibrate(errors: Sequence[float] | np.ndarray, shift: float = SHIFT, arl0: float = ARL0) -> Calibration:
    """The detector for ``errors`` (the reference's absolute errors): ``h`` for an ARL0 of at least ``arl0``."""
    values = np.abs(np.asarray(errors, dtype=float))
    values = values[np.isfinite(values)]
    if len(values) < MIN_ROWS:
        raise CalibrationError(f"{len(values)} reference errors, at least {MIN_ROWS} are needed")
    mean, std = float(values.mean()), float(values.std(ddof=1))
    if not mean > 0 or not std > 0:
        raise CalibrationError(f"the reference errors do not vary (mean {mean:g}, std {std:g})")
    z = (values - mean) / std
    delta = shift * mean / std
    k = delta / 2
    low, high = 0.0, 1.0
    while run_length(z, k, high) < arl0:
        low, high = high, 2 * high
        if high > 1e4:
            raise CalibrationError(f"no threshold gives an ARL0 of {arl0:g} rows")
    for _ in range(40):  # bisection to a thousandth of a std
        if high - low < 1e-3:
            break
        middle = (low + high) / 2
        low, high = (middle, high) if run_length(z, k, middle) < arl0 else (low, middle)
    shifted = ((1 + shift) * values - mean) / std
    return Calibration(mean, std, len(values), shift, k, high, run_length(z, k, high), run_length(shifted, k, high))


@dataclass(frozen=True)
class Verdict:
    """A change of the detector's state, at its ``row``-th error (1-based, since it started)."""

    raised: bool
    row: int
    mae: float  # of the errors since the up (or down) statistic last left 0: the level it judged


class Cusum:
    """The detector's state: fed the absolute errors in order, it says when it raises and clears."""

    def __init__(self, calibration: Calibration) -> None:
        self.calibration = calibration
        self.raised = False
        self.rows = 0
        self.up = 0.0  # S+, in std units
        self.down = 0.0  # S-, while raised
        self._run: list[float] = [0.0, 0.0]  # sum and count of |e| since the statistic in charge left 0

    def add(self, errors: Iterable[float]) -> list[Verdict]:
        """Take the next absolute errors (non-finite ones are skipped); the changes they made, in order."""
        c = self.calibration
        delta = 2 * c.k
        changes: list[Verdict] = []
        for error in errors:
            if not math.isfinite(error):
                continue
            self.rows += 1
            z = (abs(error) - c.mean) / c.std
            if not self.raised:
                self.up = self._step(self.up, z - c.k, abs(error))
                if self.up > c.h:
                    changes.append(Verdict(True, self.rows, self._level()))
                    self.raised, self.up, self.down, self._run = True, 0.0, 0.0, [0.0, 0.0]
            else:
                self.down = self._step(self.down, delta - z - c.k, abs(error))
                if self.down > c.h:
                    changes.append(Verdict(False, self.rows, self._level()))
                    self.raised, self.up, self.down, self._run = False, 0.0, 0.0, [0.0, 0.0]
        return changes

    def _step(self, statistic: float, increment: float, error: float) -> float:
        statistic = max(0.0, statistic + increment)
        if statistic == 0.0:
            self._run = [0.0, 0.0]
        else:
            self._run[0] += error
            self._run[1] += 1
        return statistic

    def _level(self) -> float:
        return self._run[0] / self._run[1] if self._run[1] else math.nan

    @property
    def statistic(self) -> float:
        """The statistic in charge, as a share of ``h`` (1 = the alert changes state)."""
        return (self.down if self.raised else self.up) / self.calibration.h
