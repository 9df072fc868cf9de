"""Predicting with the user's fitted model, fed as it was fitted. No I/O: the model comes in as an object.

Any fitted object with scikit-learn's ``predict``:

- one fitted on a pandas DataFrame (it has ``feature_names_in_``: a ``Pipeline`` with a
  ``ColumnTransformer``, say) is fed a DataFrame with those columns, in that order: a numeric
  feature as float64 (NaN where missing), a categorical one as pandas' ``str`` dtype (what
  ``read_csv`` gives a text column; NaN where missing);
- a bare estimator is fed a 2-D array in schema order (floats, or objects where the schema
  has categorical features).

A model that raises on some rows (a missing value it cannot take, say) gets those rows refused
with its own reason; the other rows of the batch are predicted (the batch is split in halves
until the failing rows stand alone).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from services.common.schema import FeatureSchema

Row = Sequence[float | str | None]
# A categorical column as the model is fed it: pandas' default text dtype (NaN for a missing value).
TEXT = pd.StringDtype(na_value=np.nan)
REASON_MAX = 300


def model_names(model: Any) -> list[str] | None:
    """The column names the model was fitted with (a DataFrame's), or None for a bare estimator."""
    names = getattr(model, "feature_names_in_", None)
    return None if names is None else [str(name) for name in names]


def schema_problem(model: Any, schema: FeatureSchema) -> str | None:
    """Why ``model`` cannot be fed rows of ``schema``, or None when it can."""
    names = model_names(model)
    if names is not None:
        missing = [name for name in names if name not in schema.names]
        extra = [name for name in schema.names if name not in names]
        if missing or extra:
            said = []
            if missing:
                said.append(f"it needs {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}, which the schema lacks")
            if extra:
                said.append(
                    f"the schema has {', '.join(extra[:10])}{' ...' if len(extra) > 10 else ''}, which it was not fitted on"
                )
            return f"the model was fitted on other columns than the schema's: {'; '.join(said)}"
        if names != list(schema.names):
            return "the model's columns are the schema's in another order (register it again: the schema takes the model's order)"
        return None
    count = getattr(model, "n_features_in_", None)
    if count is not None and count != len(schema):
        return f"the model expects {count} features, and the schema has {len(schema)} ({schema.listing()})"
    return None


def fitted(model: Any) -> bool:
    """Whether a scikit-learn estimator was fitted (scikit-learn's own check); any other object with
    ``predict`` is taken at its word."""
    if not callable(getattr(model, "fit", None)):
        return True
    try:
        check_is_fitted(model)
    except NotFittedError:
        return False
    except TypeError:  # not a scikit-learn estimator after all
        return True
    return True


def reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 3] + "..."


class Predictor:
    """A fitted model, the schema its rows come in, and the version string its predictions carry."""

    def __init__(self, model: Any, version: str, schema: FeatureSchema) -> None:
        if not callable(getattr(model, "predict", None)):
            raise TypeError(f"expected a fitted model with a predict method (scikit-learn's API), got {type(model).__name__}")
        if not fitted(model):
            raise TypeError(f"expected a fitted model, got an unfitted {type(model).__name__} (call fit before pickling it)")
        if (problem := schema_problem(model, schema)) is not None:
            raise ValueError(problem)
        self.model = model
        self.version = version
        self.schema = schema
        self.by_name = model_names(model) is not None  # fed a DataFrame

    # -- what the model is fed
    def model_input(self, rows: Sequence[Row] | np.ndarray) -> Any:
        """Rows in schema order as the model takes them."""
        if self.schema.numeric_only:  # one float block (None becomes NaN)
            return self._numeric(np.asarray(rows, dtype=float).reshape(len(rows), len(self.schema.features)))
        if not self.by_name:
            return np.array([list(row) for row in rows], dtype=object)
        columns = list(zip(*rows, strict=True)) if len(rows) else [() for _ in self.schema.features]
        return self._frame(columns)

    def frame_input(self, frame: pd.DataFrame) -> Any:
        """A DataFrame with (at least) the schema's columns, as the model takes it: what register feeds."""
        columns = [
            frame[spec.name].to_numpy(dtype=float, na_value=np.nan) if spec.numeric else categorical_objects(frame[spec.name])
            for spec in self.schema.features
        ]
        if self.schema.numeric_only:
            return self._numeric(np.column_stack(columns))
        if self.by_name:
            return self._frame(columns)
        return np.column_stack([np.asarray(column, dtype=object) for column in columns])

    def _numeric(self, block: np.ndarray) -> Any:
        """A (rows × features) float array as the model takes it: as it is, or as the DataFrame of the
        schema's columns. From the one block, not a Series per column (which pandas aligns on their
        indexes one by one: 2.9 ms for a 100-feature row, a quarter of model_api's CPU in the bench's
        100-feature burst, py-spy), the frame costs 35 µs."""
        return pd.DataFrame(block, columns=list(self.schema.names)) if self.by_name else block

    def _frame(self, columns: Sequence[Any]) -> pd.DataFrame:
        """A mixed schema's columns (sequences in schema order) as a DataFrame of the declared dtypes,
        built from arrays (not Series, for the same reason as ``_numeric``)."""
        return pd.DataFrame(
            {
                spec.name: np.asarray(column, dtype=float) if spec.numeric else pd.array(column, dtype=TEXT)
                for spec, column in zip(self.schema.features, columns, strict=True)
            }
        )

    # -- predicting
    def predict(self, rows: Sequence[Row] | np.ndarray) -> list[float]:
        """One prediction per row, in one vectorised call; the model's exception if it raises. A row
        the model's arithmetic overflows on gets a non-finite prediction, which the callers refuse."""
        if len(rows) == 0:
            return []
        return self.predict_input(self.model_input(rows))

    def predict_input(self, model_input: Any) -> list[float]:
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.asarray(self.model.predict(model_input), dtype=float).reshape(-1)
        if len(values) != len(model_input):
            raise ValueError(f"the model returned {len(values)} predictions for {len(model_input)} rows")
        return values.tolist()

    def predict_each(self, rows: Sequence[Row] | np.ndarray) -> list[float | str]:
        """Each row's prediction, or the model's reason for refusing that row (a string): a batch the
        model raises on is split in halves until the rows it raises on stand alone."""
        if len(rows) == 0:
            return []
        try:
            return list(self.predict(rows))
        except Exception as exc:  # noqa: BLE001 - the user's model may raise anything; the row is refused with it
            if len(rows) == 1:
                return [reason(exc)]
        middle = len(rows) // 2
        return [*self.predict_each(rows[:middle]), *self.predict_each(rows[middle:])]


def categorical_objects(column: pd.Series) -> np.ndarray:
    """A text column as an object array of strings, None where missing."""
    values = column.astype(object).to_numpy()
    missing = pd.isna(column).to_numpy()
    out = np.array([str(v) for v in values], dtype=object)
    out[missing] = None
    return out
