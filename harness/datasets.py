"""Datasets that are not diabetes, made here, for the tests and the bench: a user's own model as users
have them (a scikit-learn ``Pipeline`` fitted on a pandas DataFrame with named numeric and
categorical columns), and a wide all-numeric one (100 features) for the cost of a large schema.

Each is a labelled table: the rows a model is fitted on come from ``fit``'s seed, the reference
rows (the file ``register`` is given) from another seed of the same distribution.
"""

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

CITIES = {"Paris": 0.4, "Lyon": 0.3, "Lille": 0.2, "Nice": 0.1}
CITY_PREMIUM = {"Paris": 90_000.0, "Lyon": 40_000.0, "Lille": 20_000.0, "Nice": 60_000.0}
CHANNELS = ("web", "agent", "app")
HOUSE_FEATURES = ("sqft", "city", "built_year", "channel", "garden_m2")
HOUSE_TARGET = "price"


def house_prices(rows: int, seed: int) -> pd.DataFrame:
    """A house-price table: sqft, built_year and garden_m2 (numeric; garden missing in ~10 % of rows),
    city and channel (categorical), and the price, which depends on all but the channel, plus noise."""
    rng = np.random.default_rng(seed)
    city = rng.choice(list(CITIES), rows, p=list(CITIES.values()))
    frame = pd.DataFrame(
        {
            "sqft": rng.normal(1500, 400, rows).round().clip(300, None),
            "city": city,
            "built_year": rng.integers(1900, 2024, rows).astype(float),
            "channel": rng.choice(CHANNELS, rows),
            "garden_m2": np.where(rng.random(rows) < 0.1, np.nan, rng.exponential(80, rows).round(1)),
        }
    )
    price = (
        200 * frame["sqft"]
        + frame["city"].map(CITY_PREMIUM)
        + (frame["built_year"] - 1900) * 300
        + frame["garden_m2"].fillna(0) * 150
        + rng.normal(0, 20_000, rows)
    )
    frame[HOUSE_TARGET] = price.round(2)
    return frame


def house_model(frame: pd.DataFrame) -> Pipeline:
    """A Pipeline as users write them: imputing and scaling the numbers, one-hot encoding the
    categories (an unseen one ignored), then a ridge regression; fitted on ``frame``'s features."""
    numeric = ["sqft", "built_year", "garden_m2"]
    categorical = ["city", "channel"]
    preprocess = ColumnTransformer(
        [
            ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
            ("categories", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    model = Pipeline([("preprocess", preprocess), ("regression", Ridge(alpha=1.0))])
    return model.fit(frame[list(HOUSE_FEATURES)], frame[HOUSE_TARGET])


def wide_numeric(rows: int, seed: int, features: int = 100) -> pd.DataFrame:
    """``features`` numeric columns x000 … x099 and a target linear in them plus noise."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(rows, features))
    weights = np.random.default_rng(12345).normal(size=features)
    frame = pd.DataFrame(matrix, columns=[f"x{j:03d}" for j in range(features)])
    frame["y"] = matrix @ weights * 10 + 100 + rng.normal(0, 5, rows)
    return frame


def wide_model(frame: pd.DataFrame) -> Pipeline:
    names = [name for name in frame.columns if name != "y"]
    return make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(frame[names], frame["y"])


@dataclass(frozen=True)
class UserModel:
    """A model file and its reference file as a user would bring them, before ``register``."""

    model_path: Path
    reference_path: Path
    target: str
    model: Any


def write_user_model(folder: Path, kind: str = "house", rows: int = 2000, reference_rows: int = 1000) -> UserModel:
    """Fit the ``kind`` model ("house" or "wide") on ``rows`` rows, pickle it into ``folder`` and write
    ``reference_rows`` other rows as its reference CSV (the model was not fitted on them)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "house":
        make, fit, target = house_prices, house_model, HOUSE_TARGET
    elif kind == "wide":
        make, fit, target = wide_numeric, wide_model, "y"
    else:
        raise ValueError(f"no dataset {kind!r}: house or wide")
    model = fit(make(rows, seed=1))
    model_path, reference_path = folder / f"{kind}.pkl", folder / f"{kind}_reference.csv"
    model_path.write_bytes(pickle.dumps(model))
    make(reference_rows, seed=2).to_csv(reference_path, index=False)
    return UserModel(model_path, reference_path, target, model)


def feature_bodies(frame: pd.DataFrame, names: list[str] | tuple[str, ...] = HOUSE_FEATURES) -> list[dict[str, Any]]:
    """Rows as features bodies by name, as a client would send them: a missing value as null."""
    features = frame[list(names)].astype(object).where(frame[list(names)].notna(), None)
    return [{str(name): value for name, value in row.items()} for row in features.to_dict("records")]
