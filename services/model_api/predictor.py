"""Predicting with a fitted regression model. No I/O: the model comes in as an object."""

from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common.messages import FEATURE_COUNT


class Predictor:
    """A fitted scikit-learn regressor and the version string its predictions carry."""

    def __init__(self, model: Any, version: str) -> None:
        n_features = getattr(model, "n_features_in_", None)
        if not callable(getattr(model, "predict", None)) or n_features is None:
            raise TypeError(f"expected a fitted scikit-learn regressor, got {type(model).__name__}")
        if n_features != FEATURE_COUNT:
            raise ValueError(f"the model expects {n_features} features, but samples have {FEATURE_COUNT}")
        self.model = model
        self.version = version

    def predict(self, rows: Sequence[Sequence[float]] | np.ndarray) -> list[float]:
        """One prediction per row, in one vectorised call. A row the model's arithmetic overflows on
        gets a non-finite prediction, which the callers refuse (without numpy's warning on top).
        A float matrix is used as it is (no copy): model_api hands the drift window the same one."""
        if len(rows) == 0:
            return []
        with np.errstate(over="ignore", invalid="ignore"):
            return [float(v) for v in self.model.predict(np.asarray(rows, dtype=float))]
