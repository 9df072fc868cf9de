"""Train the demo model: ``python -m services.model_api.train [--out PATH] [--model KIND] [--seed N]``.

Fits a model (linear, ridge or random_forest) on a fixed train split of scikit-learn's
diabetes data, writes the pickle (``MODEL_PATH`` by default), ``<file>.json`` with what was trained,
its feature schema (the ten numeric diabetes columns) and how well it does on the held-out rows,
and ``<file>.reference.parquet``: every row of the dataset (the population the demo samples),
with its target and the model's prediction — what model_api compares what it is asked with
(drift) and what features_api's demo draws. The same kind of sidecar as ``register`` writes for
a model of yours: diabetes is simply the default schema.
"""

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.datasets import load_diabetes
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import train_test_split

from services.common.estimate import LOSS_MODEL
from services.common.reference import write_reference
from services.common.registration import SERVED, RegistrationError, read_sidecar, served_elsewhere
from services.common.settings import get_settings
from services.model_api.loss_model import FOLDS, fit_loss_model, out_of_fold, write_loss_model
from services.model_api.modelstore import model_version, save_model
from services.model_api.predictor import Predictor
from services.model_api.profiling import infer_schema, json_safe_params, reference_table, score

TEST_SIZE = 0.2
DEFAULT_SEED = 42
# Small on purpose: the forest trains in about a second and predicts a batch in milliseconds.
MODELS: dict[str, Callable[[int], Any]] = {
    "linear": lambda _seed: LinearRegression(),
    "ridge": lambda _seed: Ridge(alpha=0.1),
    "random_forest": lambda seed: RandomForestRegressor(n_estimators=50, min_samples_leaf=3, random_state=seed, n_jobs=1),
}


@dataclass(frozen=True)
class Split:
    """The fixed train/held-out split of the diabetes data every model is measured on."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    seed: int
    train_index: np.ndarray  # the training rows' positions in the dataset (its reference's order)


def diabetes_frame() -> pd.DataFrame:
    """scikit-learn's diabetes data (it ships with it: no download), its ten features and ``target``."""
    frame: pd.DataFrame = load_diabetes(as_frame=True).frame
    return frame


def diabetes_split(seed: int = DEFAULT_SEED) -> Split:
    dataset = load_diabetes()
    # The index rides along: the shuffle depends only on the row count and the seed, so the split is as before.
    x_train, x_test, y_train, y_test, train_index, _ = train_test_split(
        dataset.data, dataset.target, np.arange(len(dataset.target)), test_size=TEST_SIZE, random_state=seed
    )
    return Split(x_train, x_test, y_train, y_test, list(dataset.feature_names), seed, train_index)


def describe(
    model: Any, split: Split, *, sklearn_version: str = sklearn.__version__, trained_at: datetime | None = None
) -> dict[str, Any]:
    """The sidecar metadata of a fitted demo model: what it is, and how it does on the held-out rows."""
    trained_at = trained_at or datetime.now(UTC)
    scores = score(np.asarray(split.y_test, dtype=float), np.asarray(model.predict(split.x_test), dtype=float))
    return {
        SERVED: "here",
        "model_type": type(model).__name__,
        "params": json_safe_params(model),
        "sklearn_version": sklearn_version,
        "feature_names": split.feature_names,
        "trained_at": trained_at.isoformat(timespec="seconds"),
        "split": {
            "test_size": TEST_SIZE,
            "random_state": split.seed,
            "train_rows": len(split.y_train),
            "test_rows": len(split.y_test),
        },
        "metrics": {**scores.to_json(), "on": f"the held-out {TEST_SIZE:.0%} of scikit-learn's diabetes data"},
        # The metric service's baseline predicts this for every row.
        "target_mean": float(np.mean(split.y_train)),
    }


def write_reference_for(
    model: Any, out: Path, split: Split | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Write the demo's reference beside ``out`` (every diabetes row, its target and ``model``'s
    prediction) and its loss model; return the sidecar's records of the schema, the reference and
    the loss model. The loss model learns the training rows' losses out of fold (``split`` says which
    rows those are: clones of ``model`` fitted on the other folds predict them) and the held-out rows' as they are."""
    frame = diabetes_frame()
    names = [str(name) for name in frame.columns if name != "target"]
    schema = infer_schema(frame, names, "target")
    target = frame["target"].to_numpy(dtype=float)
    predictions = np.asarray(Predictor(model, "train", schema).predict_input(frame[names].to_numpy(dtype=float)), dtype=float)
    table = reference_table(frame, schema, target, predictions, "scikit-learn's diabetes data")
    honest = predictions.copy()
    fitted_on = "every diabetes row, the model's prediction of each"
    if split is not None:
        honest[split.train_index] = out_of_fold(model, split.x_train, split.y_train)
        fitted_on = (
            f"every diabetes row: the {len(split.train_index)} training rows' losses out of fold "
            f"({FOLDS} clones of the model, each fitted without one fold), the held-out rows' as the model predicts them"
        )
    loss = fit_loss_model(schema, frame[names].to_numpy(dtype=float), target, honest)
    return schema.to_json(), write_reference(out, table), write_loss_model(out, loss, fitted_on)


def train(out: Path, seed: int = DEFAULT_SEED, model: str = "linear") -> dict[str, Any]:
    split = diabetes_split(seed)
    fitted = MODELS[model](seed).fit(split.x_train, split.y_train)
    metadata = describe(fitted, split)
    # Before the sidecar that vouches for them:
    metadata["schema"], metadata["reference"], metadata[LOSS_MODEL] = write_reference_for(fitted, out, split)
    return save_model(fitted, out, metadata)


def summary_line(done: str, out: Path, metadata: dict[str, Any]) -> str:
    metrics = metadata["metrics"]
    return (
        f"{done} {out} ({metadata['model_type']}, model_version {model_version(metadata['sha256'])}): "
        f"held-out MAE {metrics['mae']:.2f}, RMSE {metrics['rmse']:.2f}, R2 {metrics['r2']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.model_api.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="model file to write (default: MODEL_PATH)")
    parser.add_argument("--model", choices=sorted(MODELS), default="linear", help="what to fit (default: linear)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random_state of the split (and the forest)")
    parser.add_argument(
        "--if-needed",
        action="store_true",
        help="make run's: only when OUT holds no registered model or profile (or a demo model older than schemas)",
    )
    args = parser.parse_args(argv)
    out = args.out or get_settings().MODEL_PATH
    if args.if_needed and (why := already_there(out)) is not None:
        print(f"{out}: {why}; not trained again")
        return 0
    print(summary_line("wrote", out, train(out, args.seed, args.model)))
    return 0


def already_there(out: Path) -> str | None:
    """Why ``out`` needs no training (a model with a current sidecar, or a profile of a model served
    elsewhere), or None: nothing there, or a demo model whose sidecar predates schemas and the
    Parquet reference, or the loss model (written again, so that its drift, demo and estimate work)."""
    try:
        metadata = read_sidecar(out)
    except FileNotFoundError:
        return "a model file without metadata (model_api says what to do)" if out.exists() else None
    except RegistrationError:
        return "its metadata is unreadable (model_api says what to do)"
    if served_elsewhere(metadata):
        return "the profile of a model served elsewhere"
    if not out.exists():
        return None
    demo = metadata.get("model_type") in {type(MODELS[kind](0)).__name__ for kind in MODELS}
    if demo and "schema" not in metadata:
        return None  # the demo's, from before schemas
    if demo and LOSS_MODEL not in metadata and "registered_at" not in metadata:
        return None  # train's demo from before the loss model (a registered model has registered_at): its estimate needs one
    return "a registered model"


if __name__ == "__main__":
    sys.exit(main())
