"""The rows and schemas the drift tests make: a mixed house-price schema (numeric, categorical,
missing values), the diabetes demo as train writes it, and a schema of 200 features."""

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_diabetes

from services.common.reference import ReferenceTable
from services.common.schema import DIABETES, FeatureSchema, FeatureSpec
from services.common.settings import Settings
from services.model_api.drift import (
    DriftMonitor,
    Reference,
)

DATA = load_diabetes().data  # what the demo draws its rows from, and its reference holds
NAMES = list(DIABETES.names)
BMI = NAMES.index("bmi")
WINDOW = Settings.model_fields["DRIFT_WINDOW_SIZE"].default  # the documented default window


Row = list[float | str | None]
CITIES = tuple(f"city-{i:02d}" for i in range(30))
CITY_SHARES = (1 / np.arange(1, 31) ** 1.1) / (1 / np.arange(1, 31) ** 1.1).sum()  # a few large cities, many small
CHANNELS = ("web", "app", "phone", "store")
CHANNEL_SHARES = np.array([0.5, 0.3, 0.15, 0.05])


@dataclass
class Homes:
    """House prices: sqft (log-normal), rooms (whole numbers: ties), income (10 % missing), city
    (30 categories), channel (4). The model ignores city and channel, so that moving them moves
    nothing else."""

    rng: np.random.Generator
    sqft_scale: float = 1.0
    missing_income: float = 0.1
    city_moved: float = 0.0  # this share of rows goes to the city ``moved_to``
    moved_to: str = "city-20"
    unseen_city: float = 0.0  # this share of rows is in a city the reference never showed
    missing_channel: float = 0.0

    def rows(self, count: int) -> list[Row]:
        rng = self.rng
        sqft = 1200 * rng.lognormal(sigma=0.4, size=count) * self.sqft_scale
        rooms = np.clip(np.round(sqft / 450 + rng.normal(0, 0.7, size=count)), 1, 9)
        income = rng.normal(60_000, 15_000, size=count)
        city = rng.choice(CITIES, p=CITY_SHARES, size=count).astype(object)
        city[rng.random(count) < self.city_moved] = self.moved_to
        city[rng.random(count) < self.unseen_city] = "Atlantis"
        channel = rng.choice(CHANNELS, p=CHANNEL_SHARES, size=count).astype(object)
        channel[rng.random(count) < self.missing_channel] = None
        missing = rng.random(count) < self.missing_income
        return [
            [float(sqft[i]), str(city[i]), channel[i], None if missing[i] else float(income[i]), float(rooms[i])]
            for i in range(count)
        ]


HOMES_NAMES = ("sqft", "city", "channel", "income", "rooms")


def predict_homes(rows: Sequence[Row]) -> np.ndarray:
    def number(value: float | str | None) -> float:
        return 60_000.0 if value is None else float(value)

    return np.array([150 * number(r[0]) + 8000 * number(r[4]) + 0.5 * number(r[3]) for r in rows])


def homes_schema(rows: Sequence[Row]) -> FeatureSchema:
    """As profiling infers it: the categories the reference shows, the most frequent first."""
    specs = []
    for j, name in enumerate(HOMES_NAMES):
        values = [row[j] for row in rows]
        missing = sum(v is None for v in values) / len(values)
        if name in ("city", "channel"):
            counts = Counter(str(v) for v in values if v is not None)
            specs.append(FeatureSpec(name, "categorical", tuple(c for c, _ in counts.most_common()), missing))
        else:
            specs.append(FeatureSpec(name, "numeric", missing_share=missing))
    return FeatureSchema(tuple(specs))


def table_of(schema: FeatureSchema, rows: Sequence[Row], predictions: np.ndarray, source: str) -> ReferenceTable:
    columns = []
    for j, spec in enumerate(schema.features):
        values = [row[j] for row in rows]
        if spec.numeric:
            columns.append(np.array([math.nan if v is None else v for v in values], dtype=float))
        else:
            columns.append(np.array(values, dtype=object))
    return ReferenceTable(schema, tuple(columns), np.zeros(len(rows)), predictions, source)


def homes_window(reference: Reference, rows: Sequence[Row]) -> dict[str, Any]:
    monitor = DriftMonitor(reference, reference.schema, size=len(rows), max_age_s=3600.0)
    monitor.observe(reference.schema.encode(rows), predict_homes(rows), 0.0)
    report = monitor.assess(0.0)
    assert report["status"] in ("calm", "drifted")
    return report


@dataclass(frozen=True)
class Demo:
    reference: Reference
    predict: Callable[[np.ndarray], np.ndarray]


def draw(rng: np.random.Generator, count: int, shift_bmi: float = 0.0) -> np.ndarray:
    """Rows as the demo sends them (uniformly from the diabetes data), bmi shifted in std units."""
    rows: np.ndarray = DATA[rng.integers(len(DATA), size=count)].copy()
    rows[:, BMI] += shift_bmi * DATA[:, BMI].std()
    return rows


@dataclass(frozen=True)
class Wide:
    """200 features: 150 numeric (normal, log-normal, Poisson counts, normal with 10 % missing) and
    50 categorical (2 to 40 categories, Zipf-like shares, some 5 % missing); the prediction a sum."""

    kinds: tuple[tuple[str, int, float], ...]

    @classmethod
    def make(cls) -> "Wide":
        kinds = []
        for j in range(200):
            if j % 4 == 3:
                kinds.append(("categorical", 2 + (j * 7) % 39, 0.05 if j % 8 == 3 else 0.0))
            else:
                kinds.append((("normal", "lognormal", "poisson", "normal")[j % 4], 0, 0.1 if j % 8 == 0 else 0.0))
        return cls(tuple(kinds))

    def columns(self, rng: np.random.Generator, rows: int) -> list[np.ndarray]:
        out = []
        for kind, categories, missing in self.kinds:
            if kind == "categorical":
                shares = 1 / np.arange(1, categories + 1) ** 1.1
                column = np.array([f"c{i}" for i in rng.choice(categories, rows, p=shares / shares.sum())], dtype=object)
                column[rng.random(rows) < missing] = None
            else:
                if kind == "poisson":
                    column = rng.poisson(3, size=rows).astype(float)
                else:
                    column = rng.normal(size=rows) if kind == "normal" else rng.lognormal(size=rows)
                column[rng.random(rows) < missing] = np.nan
            out.append(column)
        return out

    def schema(self, columns: list[np.ndarray]) -> FeatureSchema:
        specs = []
        for j, ((kind, _k, _m), column) in enumerate(zip(self.kinds, columns, strict=True)):
            if kind == "categorical":
                counts = Counter(v for v in column if v is not None)
                specs.append(FeatureSpec(f"f{j:03d}", "categorical", tuple(c for c, _ in counts.most_common())))
            else:
                specs.append(FeatureSpec(f"f{j:03d}", "numeric"))
        return FeatureSchema(tuple(specs))


def prediction_of(columns: list[np.ndarray]) -> np.ndarray:
    numeric = np.column_stack([c for c in columns if c.dtype != object])
    return np.asarray(np.nansum(numeric[:, :20], axis=1), dtype=float)


def binned_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The counts per bin, bins right-closed (edges[i-1] < x <= edges[i]), by numpy's digitize."""
    return np.bincount(np.digitize(values, edges, right=True), minlength=edges.size + 1)
