"""What ``train`` and ``register`` compute from a table of labelled rows: the feature schema, the
model's metrics on them, and the reference table kept beside the model. No I/O: a DataFrame in.

- The schema: every column but the target (and the predictions of a model served elsewhere, and
  those the user leaves out) is a feature; a column pandas reads as numbers (or booleans) is
  numeric, any other (text, categories) is categorical, its categories the values seen, the most
  frequent first. Its order is the model's ``feature_names_in_`` when it has them, else the file's.
- The metrics: MAE, RMSE and R² of the predictions over every row with a target.
- The reference: at most ``ROWS_MAX`` of those rows (a seeded uniform sample of a larger file),
  with their targets and the predictions.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from services.common.reference import RESERVED, ROWS_MAX, ReferenceTable
from services.common.schema import CATEGORIES_MAX, FEATURES_MAX, PREDICTION, FeatureSchema, FeatureSpec
from services.model_api.predictor import categorical_objects

SAMPLE_SEED = 0


class BadTable(ValueError):
    """A table of labelled rows that cannot make a schema or a reference; the message says why."""


def is_numeric(column: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))


def feature_spec(name: str, column: pd.Series) -> FeatureSpec:
    missing = float(column.isna().mean()) if len(column) else 0.0
    if is_numeric(column):
        return FeatureSpec(name, "numeric", missing_share=missing)
    counts = column.dropna().astype(str).value_counts(sort=True)
    categories = tuple(str(c) for c in counts.index[:CATEGORIES_MAX])
    return FeatureSpec(name, "categorical", categories=categories, missing_share=missing)


def feature_columns(frame: pd.DataFrame, target: str, leave_out: list[str]) -> list[str]:
    """The file's feature columns, in its order: all but the target and those left out."""
    for name in [target, *leave_out]:
        if name not in frame.columns:
            raise BadTable(f"the file has no column {name!r}; its columns are {', '.join(map(str, frame.columns[:30]))}")
    columns = [str(name) for name in frame.columns if name != target and name not in leave_out]
    if not columns:
        raise BadTable("the file has no feature columns besides the target")
    if len(columns) > FEATURES_MAX:
        raise BadTable(f"the file has {len(columns)} feature columns; a schema has at most {FEATURES_MAX}")
    reserved = [name for name in columns if name in (*RESERVED, PREDICTION)]
    if reserved:
        raise BadTable(
            f"a feature may not be named {', '.join(reserved)}: the reference file's own columns and drift's name for "
            "the model's output; rename it in the file (and in the model's training data)"
        )
    return columns


def infer_schema(frame: pd.DataFrame, names: list[str], target: str) -> FeatureSchema:
    """The schema of ``frame``'s columns ``names``, in that order."""
    return FeatureSchema(tuple(feature_spec(name, frame[name]) for name in names), target=target)


def numeric_target(frame: pd.DataFrame, column: str, what: str = "target") -> np.ndarray:
    if column not in frame.columns:
        raise BadTable(f"the file has no column {column!r}; its columns are {', '.join(map(str, frame.columns[:30]))}")
    values = frame[column]
    if not is_numeric(values):
        raise BadTable(
            f"the {what} column {column!r} is not numeric (pandas reads it as {values.dtype}): a regression's {what} is a number"
        )
    return values.to_numpy(dtype=float, na_value=np.nan)


@dataclass(frozen=True)
class Scores:
    """The model's metrics over the rows it predicted a finite number for."""

    mae: float
    rmse: float
    r2: float
    rows: int
    unpredicted: int  # rows it refused or predicted no finite number for

    def to_json(self) -> dict[str, Any]:
        return {"mae": self.mae, "rmse": self.rmse, "r2": self.r2, "rows": self.rows, "unpredicted": self.unpredicted}


def score(target: np.ndarray, predictions: np.ndarray) -> Scores:
    finite = np.isfinite(predictions)
    if finite.sum() < 2:
        raise BadTable(f"the model predicted a finite number for {int(finite.sum())} of {len(target)} rows: nothing to score")
    y, p = target[finite], predictions[finite]
    r2 = float(r2_score(y, p)) if np.ptp(y) > 0 else math.nan
    return Scores(
        float(mean_absolute_error(y, p)), float(root_mean_squared_error(y, p)), r2, int(finite.sum()), int((~finite).sum())
    )


def sample_rows(rows: int, rows_max: int = ROWS_MAX, seed: int = SAMPLE_SEED) -> np.ndarray:
    """The positions of the rows kept: all of them up to ``rows_max``, else a seeded uniform sample, in file order."""
    if rows <= rows_max:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, size=rows_max, replace=False))


def reference_table(
    frame: pd.DataFrame, schema: FeatureSchema, target: np.ndarray, predictions: np.ndarray, source: str, rows_max: int = ROWS_MAX
) -> ReferenceTable:
    keep = sample_rows(len(frame), rows_max)
    part = frame.iloc[keep]
    columns = tuple(
        part[spec.name].to_numpy(dtype=float, na_value=np.nan) if spec.numeric else categorical_objects(part[spec.name])
        for spec in schema.features
    )
    kept = f"{len(keep):,} of {len(frame):,} rows" if len(keep) < len(frame) else f"{len(frame):,} rows"
    return ReferenceTable(schema, columns, target[keep], predictions[keep], f"{source} ({kept})")


def json_safe_params(model: Any) -> dict[str, Any]:
    get_params = getattr(model, "get_params", None)
    if not callable(get_params):
        return {}
    return {
        name: value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        for name, value in get_params(deep=False).items()
    }
