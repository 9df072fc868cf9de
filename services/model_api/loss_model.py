"""The loss model (issue 24): a second model that predicts each prediction's absolute error
``|y - ŷ|`` from the features and ``ŷ`` (NannyML's Direct Loss Estimation, row by row).

``train`` and ``register`` fit it on the reference rows, a ``HistGradientBoostingRegressor``
(numbers as they are, a category as its code and a categorical feature, NaN where missing;
scikit-learn, no new dependency), on squared error, so that it estimates each row's *expected*
absolute error and the mean of the estimates that of the errors. The losses it learns must be
the model's on rows it did not see: ``register``'s reference rows are held out already; ``train``'s
demo reference holds the model's training rows, whose losses come from clones of the model
refitted in K folds (``out_of_fold``). Its calibration (services/common/estimate.py) is measured
K-fold too, on the loss model's own held-out rows.

It is written beside the model (``<file>.loss.pkl``), its sha256 in the sidecar as the
reference's is; model_api loads it only when the hash matches, and without it says
"estimate unavailable, because …" and serves on.
"""

import functools
import hashlib
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import KFold, cross_val_predict
from threadpoolctl import ThreadpoolController

from services.common.estimate import LOSS_MODEL, Calibration, loss_model_path
from services.common.files import atomic_write, read_vouched
from services.common.schema import FeatureSchema
from services.model_api.tree_walk import ROWS_MAX, CompiledTrees, compile_trees

log = logging.getLogger(__name__)

FOLDS = 5
SEED = 0
MAX_BINS = 255  # a categorical feature with more categories is given to the loss model as its codes, a number
Row = Sequence[float | str | None]


def regressor(categorical: np.ndarray, rows: int) -> HistGradientBoostingRegressor:
    """Small on purpose: a few hundred reference rows must not be learnt by heart, and each tree costs
    scikit-learn's predict a few microseconds a call (50 trees of 8 leaves)."""
    return HistGradientBoostingRegressor(
        max_iter=50,
        learning_rate=0.1,
        max_leaf_nodes=8,
        min_samples_leaf=max(5, min(40, rows // 20)),
        categorical_features=categorical if categorical.any() else None,
        random_state=SEED,
    )


@dataclass
class LossModel:
    """The fitted loss model and the schema its rows come in."""

    model: HistGradientBoostingRegressor
    schema: FeatureSchema
    calibration: Calibration

    def inputs(self, encoded: np.ndarray, predictions: Sequence[float] | np.ndarray) -> np.ndarray:
        """The loss model's matrix: the encoded features (``FeatureSchema.encode``), then ``ŷ``."""
        return np.column_stack([encoded, np.asarray(predictions, dtype=float)])

    def estimate(self, rows: Sequence[Row], predictions: Sequence[float]) -> list[float]:
        """Each row's estimated absolute error (rows in schema order, as validated), in one call."""
        if not len(rows):
            return []
        return self.estimate_encoded(self.schema.encode(rows), predictions)

    def estimate_encoded(self, encoded: np.ndarray, predictions: Sequence[float] | np.ndarray) -> list[float]:
        inputs = self.inputs(encoded, predictions)
        walk = self.compiled
        if isinstance(walk, CompiledTrees) and len(inputs) <= ROWS_MAX:
            values = walk.predict(inputs)  # the same numbers, a tenth of the time for a few rows (tree_walk.py)
        else:
            # One OpenMP thread: scikit-learn's tree predict opens a parallel region per tree, and on a busy
            # machine two threads made a batch of 500 ten times slower (bench/estimate.py; docs/monitoring.md).
            with _threads().limit(limits=1, user_api="openmp"):
                values = np.asarray(self.model.predict(inputs), dtype=float)
        estimated: list[float] = np.maximum(values, 0.0).tolist()  # an error is not negative, whatever the trees add up to
        return estimated

    @functools.cached_property
    def compiled(self) -> CompiledTrees | str:
        """The trees compiled for a few rows at a time, or why they are not (scikit-learn's predict is
        used then). Made when first asked (``read_loss_model`` asks), never pickled."""
        with _threads().limit(limits=1, user_api="openmp"):
            return compile_trees(self.model)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("compiled", None)
        return state


@functools.cache
def _threads() -> ThreadpoolController:
    """threadpoolctl's view of the loaded libraries, found once (a limit then costs about 10 µs)."""
    return ThreadpoolController()


def categorical_mask(schema: FeatureSchema) -> np.ndarray:
    mask = [not spec.numeric and len(spec.categories) <= MAX_BINS for spec in schema.features]
    return np.array([*mask, False])  # the prediction is a number


def out_of_fold(model: Any, x: Any, y: np.ndarray, folds: int = FOLDS, seed: int = SEED) -> np.ndarray:
    """The prediction of each row by a clone of ``model`` fitted on the other folds (not on it)."""
    cv = KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=seed)
    return np.asarray(cross_val_predict(clone(model), x, y, cv=cv), dtype=float)


def fit_loss_model(schema: FeatureSchema, encoded: np.ndarray, target: np.ndarray, predictions: np.ndarray) -> LossModel:
    """The loss model of these rows (encoded features, targets, the model's out-of-sample predictions);
    its calibration measured K-fold. ValueError when fewer than 2·FOLDS rows have a prediction."""
    known = np.isfinite(predictions) & np.isfinite(target)
    if known.sum() < 2 * FOLDS:
        raise ValueError(f"{int(known.sum())} reference rows have a prediction: a loss model needs {2 * FOLDS} or more")
    mask = categorical_mask(schema)
    x = np.column_stack([encoded[known], predictions[known]])
    loss = np.abs(target[known] - predictions[known])
    held_out = np.maximum(out_of_fold(regressor(mask, len(loss)), x, loss), 0.0)
    residual = loss - held_out
    calibration = Calibration(
        rows=len(loss), bias=float(residual.mean()), residual_sd=float(residual.std(ddof=1)), mean_loss=float(loss.mean())
    )
    return LossModel(regressor(mask, len(loss)).fit(x, loss), schema, calibration)


# -- the file beside the model


def write_loss_model(model_path: Path, loss: LossModel, fitted_on: str) -> dict[str, Any]:
    """Write ``<model>.loss.pkl``; return what the sidecar records of it."""
    path = loss_model_path(model_path)
    data = pickle.dumps(loss, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write(path, data)
    return {
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "fitted_on": fitted_on,
        "calibration": loss.calibration.to_json(),
    }


def read_loss_model(model_path: Path, metadata: dict[str, Any], schema: FeatureSchema) -> LossModel | str:
    """The loss model the sidecar vouches for, or why there is none ("estimate unavailable, because …")."""
    again = "register the model again (train, for the demo), which fits one"
    vouched = read_vouched(model_path, metadata, LOSS_MODEL, "loss model", again)
    if isinstance(vouched, str):
        return vouched
    path, data, _sha256 = vouched
    try:
        loss = pickle.loads(data)  # noqa: S301 - verified against the sidecar's sha256, as the model file is
    except Exception as exc:  # noqa: BLE001 - any unpickling failure makes the estimate unavailable, never the model
        return f"the loss model {path} could not be unpickled: {type(exc).__name__}: {exc}"
    if not isinstance(loss, LossModel):
        return f"{path} holds a {type(loss).__name__}, not a loss model: {again}"
    if loss.schema != schema:
        return f"the loss model {path} was fitted on another schema than the model's ({schema.describe()}): {again}"
    if isinstance(why := loss.compiled, str):
        log.warning("the loss model %s estimates with scikit-learn's predict (slower for a few rows): %s", path, why)
    return loss
