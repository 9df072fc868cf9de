"""Drawing the demo's samples from the model's reference table, and changing what is drawn on
request (a scenario) to watch drift happen. No I/O.

The reference is the registered model's (``train``: every row of scikit-learn's diabetes data;
``register``: the user's labelled rows), so ``make run`` with a model of yours shows a live demo of
it. A sample is a row drawn at random with its target (and, for a model served elsewhere, the
prediction the reference file recorded for it).

A scenario changes what is drawn from then on, per feature, the labels staying the rows' own: a
numeric feature ``x → mean + scale·(x − mean) + shift·std + noise·std·N(0, 1)`` (shift and noise in
units of its std over the reference, a missing value staying missing); a categorical feature by
moving a share of the rows to a named category (``{"city": {"Lyon": 0.3}}``: 30 % of the rows
drawn get ``Lyon``; ``{"city": "Lyon"}`` moves them all; a category the reference never showed
may be named, to watch "unseen" values come).

Two changes aim at the estimated error (issue 24). A **tilt** is a covariate shift that keeps the
labels true: rows are drawn with weights ``exp(tilt·z)``, ``z`` a numeric feature's value in std units
(``{"bmi": 1.0}``: the rows of high bmi come more often, each with its own label), so the inputs move
toward where the model may err more and the labels follow as the data says. A **concept** change
keeps the inputs and changes the labels' relation to them: ``label += concept·std(target)·z``
(``{"bmi": -1.0}``: the labels no longer rise with bmi as they did), which no input drift can see.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.messages import SampleIdClock
from services.common.reference import ReferenceTable
from services.common.schema import CATEGORY_MAX_CHARS, FeatureSchema

__all__ = ["ReferenceSampler", "Sample", "SampleIdClock", "Scenario", "ScenarioError"]

# A scenario's bounds, in units of a feature's std: beyond them nothing more is learnt, and the
# features stay far inside what model_api accepts.
MAX_SHIFT = 10.0
MAX_SCALE = 10.0
MAX_NOISE = 10.0
MAX_TILT = 3.0
MAX_CONCEPT = 10.0


@dataclass(frozen=True)
class Sample:
    id: str
    ts: float
    features: list[float | str | None]  # in schema order
    label: float
    prediction: float | None = None  # a model served elsewhere: what the reference file recorded


class ScenarioError(ValueError):
    """A scenario that does not fit the schema; ``where`` is (the setting, the feature) it is about."""

    def __init__(self, where: tuple[str, str], message: str) -> None:
        self.where = where
        super().__init__(message)


@dataclass(frozen=True)
class Scenario:
    """A change to the rows drawn (see the module's docstring): per numeric feature a shift, scale and
    noise in its std units; per categorical feature the shares of rows moved to named categories."""

    shift: Mapping[str, float] = field(default_factory=dict)
    scale: Mapping[str, float] = field(default_factory=dict)
    noise: Mapping[str, float] = field(default_factory=dict)
    move: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # feature -> {category: share}
    since: float | None = None  # when it was set (epoch s); None: no scenario
    tilt: Mapping[str, float] = field(default_factory=dict)  # feature -> rows drawn with weight exp(tilt·z)
    concept: Mapping[str, float] = field(default_factory=dict)  # feature -> label += concept·std(target)·z

    @property
    def active(self) -> bool:
        return (
            any(v != 0 for v in self.shift.values())
            or any(v != 1 for v in self.scale.values())
            or any(v != 0 for v in self.noise.values())
            or any(any(share > 0 for share in moves.values()) for moves in self.move.values())
            or any(v != 0 for v in self.tilt.values())
            or any(v != 0 for v in self.concept.values())
        )

    def to_json(self) -> dict[str, Any]:
        """As a request sets it: numeric changes by name, a categorical shift as its moves."""
        return {
            "shift": {**self.shift, **{name: dict(moves) for name, moves in self.move.items()}},
            "scale": dict(self.scale),
            "noise": dict(self.noise),
            "tilt": dict(self.tilt),
            "concept": dict(self.concept),
        }


def scenario_for(
    schema: FeatureSchema,
    shift: Mapping[str, float | str | Mapping[str, float]],
    scale: Mapping[str, float],
    noise: Mapping[str, float] | float,
    since: float | None = None,
    *,
    tilt: Mapping[str, float] | None = None,
    concept: Mapping[str, float] | None = None,
) -> Scenario:
    """A scenario as a request states it, checked against ``schema``; ScenarioError naming the feature.

    ``shift`` takes a number for a numeric feature, and for a categorical one a category (every row
    moved to it) or ``{category: share}``; ``noise`` one number for every numeric feature, or per feature."""
    numeric_shift: dict[str, float] = {}
    moves: dict[str, dict[str, float]] = {}
    for name, value in shift.items():
        spec = _known(schema, "shift", name)
        if spec.numeric:
            numeric_shift[name] = _bounded("shift", name, value, -MAX_SHIFT, MAX_SHIFT)
        else:
            moves[name] = _moves(name, value)
    if isinstance(noise, Mapping):
        noise_by_name: Mapping[str, float] = noise
    else:  # one level for every numeric feature
        noise_by_name = {
            spec.name: _bounded("noise", spec.name, noise, 0.0, MAX_NOISE) for spec in schema.features if spec.numeric
        }
    tilt, concept = dict(tilt or {}), dict(concept or {})
    for what, values, low, high in (
        ("scale", scale, 0.0, MAX_SCALE),
        ("noise", noise_by_name, 0.0, MAX_NOISE),
        ("tilt", tilt, -MAX_TILT, MAX_TILT),
        ("concept", concept, -MAX_CONCEPT, MAX_CONCEPT),
    ):
        for name, value in values.items():
            if not _known(schema, what, name).numeric:
                raise ScenarioError(
                    (what, name), f"{what} applies to numeric features; {name} is categorical (shift it to a category)"
                )
            _bounded(what, name, value, low, high)
    return Scenario(numeric_shift, dict(scale), dict(noise_by_name), moves, since, tilt, concept)


def _known(schema: FeatureSchema, what: str, name: str) -> Any:
    try:
        return schema.spec(name)
    except KeyError as exc:
        raise ScenarioError((what, name), str(exc.args[0])) from None


def _bounded(what: str, name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and low <= value <= high):
        raise ScenarioError(
            (what, name), f"{what} of {name} must be a number between {low:g} and {high:g} (its std units), not {value!r}"
        )
    return float(value)


def _moves(name: str, value: Any) -> dict[str, float]:
    """A categorical feature's shift: a category (share 1) or {category: share}, the shares summing to at most 1."""
    moves = {value: 1.0} if isinstance(value, str) else value
    if not isinstance(moves, Mapping) or not moves:
        raise ScenarioError(
            ("shift", name),
            f'{name} is categorical: shift it to a category ("Lyon") or by shares ({{"Lyon": 0.3}}), not {value!r}',
        )
    out: dict[str, float] = {}
    for category, share in moves.items():
        if not isinstance(category, str) or not 1 <= len(category) <= CATEGORY_MAX_CHARS:
            raise ScenarioError(("shift", name), f"{name}: a category is a string of 1 to {CATEGORY_MAX_CHARS} characters")
        out[category] = _bounded("shift", f"{name} to {category!r}", share, 0.0, 1.0)
    if sum(out.values()) > 1 + 1e-9:
        raise ScenarioError(("shift", name), f"{name}: the shares moved add up to {sum(out.values()):g}, more than 1")
    return out


class ReferenceSampler:
    """Random rows of the reference table with their targets, through a scenario if one is set."""

    def __init__(self, table: ReferenceTable, seed: int | None = None, *, with_predictions: bool = False) -> None:
        self.table = table
        self.schema = table.schema
        self.with_predictions = with_predictions
        self._rng = np.random.default_rng(seed)
        # The scenario's own randomness (noise, which rows move): the rows drawn are the same with or without one.
        self._scenario_rng = np.random.default_rng(None if seed is None else seed + 1)
        # Every feature as a float (categorical positions NaN): a row is one numpy row, turned into a
        # list in one call; the categorical values and the missing numbers are put in after.
        self._numbers = np.column_stack(
            [
                column if spec.numeric else np.full(table.rows, math.nan)
                for spec, column in zip(self.schema.features, table.columns, strict=True)
            ]
        )
        self._numeric = np.array([spec.numeric for spec in self.schema.features])
        self._missing_rows = (
            np.isnan(self._numbers[:, self._numeric]).any(axis=1) if self._numeric.any() else np.zeros(table.rows, bool)
        )
        # Each numeric feature's mean and std over the values present (the std is a scenario's unit).
        self.mean, self.std = np.zeros(len(self.schema)), np.zeros(len(self.schema))
        for j in np.flatnonzero(self._numeric):
            present = self._numbers[:, j][~np.isnan(self._numbers[:, j])]
            if present.size:
                self.mean[j], self.std[j] = present.mean(), present.std()
        self.scenario = Scenario()
        self._shift = self._noise = np.zeros(len(self.schema))
        self._scale = np.ones(len(self.schema))
        self._moves: list[tuple[int, list[str], np.ndarray]] = []
        self._tilted: np.ndarray | None = None
        self._concept = np.zeros(len(self.schema))
        # A model served elsewhere: only the rows the reference file recorded a prediction for.
        self._drawable = np.flatnonzero(np.isfinite(table.prediction)) if with_predictions else None
        if self._drawable is not None and not len(self._drawable):
            raise ValueError("the reference records no prediction to replay: no row to draw")

    @property
    def rows(self) -> int:
        return self.table.rows

    def set_scenario(self, scenario: Scenario) -> None:
        """Draw through ``scenario`` from now on (``Scenario()`` ends it). The callers' own rows
        (POST /samples) are theirs: a scenario changes only what the demo draws."""

        def vector(values: Mapping[str, float], default: float) -> np.ndarray:
            out = np.full(len(self.schema), default)
            for name, value in values.items():
                out[self.schema.position(name)] = value
            return out

        self._shift = vector(scenario.shift, 0.0) * self.std
        self._scale = vector(scenario.scale, 1.0)
        self._noise = vector(scenario.noise, 0.0) * self.std
        self._moves = [
            (self.schema.position(name), list(moves), np.cumsum(list(moves.values()))) for name, moves in scenario.move.items()
        ]
        self._tilted = self._tilt_weights(vector(scenario.tilt, 0.0)) if any(scenario.tilt.values()) else None
        self._concept = vector(scenario.concept, 0.0) * float(np.std(self.table.target))
        self.scenario = scenario

    def _tilt_weights(self, tilt: np.ndarray) -> np.ndarray:
        """The cumulative weights ``exp(tilt·z)`` of the drawable rows (a missing value counts as the mean)."""
        z = np.zeros(self.table.rows)
        for j in np.flatnonzero(tilt):
            if self.std[j] > 0:
                z += tilt[j] * np.nan_to_num((self._numbers[:, j] - self.mean[j]) / self.std[j])
        weights = np.exp(z - z.max())
        if self._drawable is not None:
            mask = np.zeros(self.table.rows, bool)
            mask[self._drawable] = True
            weights[~mask] = 0.0
        cumulative: np.ndarray = np.cumsum(weights)
        return cumulative

    def std_by_name(self) -> dict[str, float]:
        return {spec.name: float(self.std[j]) for j, spec in enumerate(self.schema.features) if spec.numeric}

    def draw(self, sample_id: str, ts: float) -> Sample:
        if self._tilted is not None:
            row = min(
                int(np.searchsorted(self._tilted, self._rng.random() * self._tilted[-1], side="right")), self.table.rows - 1
            )
        elif self._drawable is None:
            row = int(self._rng.integers(self.table.rows))
        else:
            row = int(self._rng.choice(self._drawable))
        numbers = self._numbers[row]
        if self.scenario.active:
            noise = self._noise * self._scenario_rng.standard_normal(numbers.size) if self._noise.any() else 0.0
            numbers = self.mean + self._scale * (numbers - self.mean) + self._shift + noise
        values: list[Any] = numbers.tolist()
        if self._missing_rows[row]:
            values = [None if self._numeric[j] and math.isnan(v) else v for j, v in enumerate(values)]
        for j in self.schema.categorical:
            values[j] = self.table.columns[j][row]
        for j, categories, cumulative in self._moves:
            u = self._scenario_rng.random()
            if u < cumulative[-1]:
                values[j] = categories[int(np.searchsorted(cumulative, u, side="right"))]
        prediction = float(self.table.prediction[row]) if self.with_predictions else None
        label = float(self.table.target[row])
        if self._concept.any():
            z = np.nan_to_num((numbers - self.mean) / np.where(self.std > 0, self.std, 1.0))
            label += float(np.dot(self._concept[self._numeric], z[self._numeric]))
        return Sample(sample_id, ts, values, label, prediction)
