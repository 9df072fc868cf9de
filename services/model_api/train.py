"""Train the regression model: ``python -m services.model_api.train [--out PATH] [--model KIND] [--seed N]``.

Fits a model (linear, ridge or random_forest) on a fixed train split of scikit-learn's
diabetes data, writes the pickle (``MODEL_PATH`` by default), ``<file>.json`` with what was trained and how
well it does on the held-out rows, and ``<file>.reference.json``: the training rows and the
model's predictions on them, which model_api compares what it is asked with (drift).
"""

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.datasets import load_diabetes
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from sklearn.model_selection import train_test_split

from services.common.settings import get_settings
from services.model_api.drift import Reference
from services.model_api.modelstore import model_version, save_model
from services.model_api.reference_file import write_reference

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


def diabetes_split(seed: int = DEFAULT_SEED) -> Split:
    dataset = load_diabetes()
    x_train, x_test, y_train, y_test = train_test_split(dataset.data, dataset.target, test_size=TEST_SIZE, random_state=seed)
    return Split(x_train, x_test, y_train, y_test, list(dataset.feature_names), seed)


def _json_safe_params(model: Any) -> dict[str, Any]:
    get_params = getattr(model, "get_params", None)
    if not callable(get_params):
        return {}
    return {
        name: value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        for name, value in get_params(deep=False).items()
    }


def describe(
    model: Any, split: Split, *, sklearn_version: str = sklearn.__version__, trained_at: datetime | None = None
) -> dict[str, Any]:
    """The sidecar metadata of a fitted model: what it is, and how it does on the held-out rows."""
    trained_at = trained_at or datetime.now(UTC)
    predicted = model.predict(split.x_test)
    return {
        "model_type": type(model).__name__,
        "params": _json_safe_params(model),
        "sklearn_version": sklearn_version,
        "feature_names": split.feature_names,
        "trained_at": trained_at.isoformat(timespec="seconds"),
        "split": {
            "test_size": TEST_SIZE,
            "random_state": split.seed,
            "train_rows": len(split.y_train),
            "test_rows": len(split.y_test),
        },
        "metrics": {
            "mae": float(mean_absolute_error(split.y_test, predicted)),
            "rmse": float(root_mean_squared_error(split.y_test, predicted)),
            "r2": float(r2_score(split.y_test, predicted)),
        },
        # The metric service's baseline predicts this for every row.
        "target_mean": float(np.mean(split.y_train)),
    }


def write_reference_for(model: Any, split: Split, out: Path) -> dict[str, Any]:
    """Write the drift reference of ``model`` beside ``out`` (the training rows and the model's
    predictions on them); return the sidecar's record of it. BadReference if it predicts NaN there."""
    source = f"the training split of scikit-learn's diabetes data (random_state {split.seed}, {len(split.x_train)} rows)"
    return write_reference(out, Reference.build(split.x_train, model.predict(split.x_train), source))


def train(out: Path, seed: int = DEFAULT_SEED, model: str = "linear") -> dict[str, Any]:
    split = diabetes_split(seed)
    fitted = MODELS[model](seed).fit(split.x_train, split.y_train)
    metadata = describe(fitted, split)
    metadata["reference"] = write_reference_for(fitted, split, out)  # before the sidecar that vouches for it
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
    args = parser.parse_args(argv)
    out = args.out or get_settings().MODEL_PATH
    print(summary_line("wrote", out, train(out, args.seed, args.model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
