"""Train the regression model: ``python -m services.model_api.train [--out PATH] [--seed N]``.

Fits a LinearRegression on a fixed train split of scikit-learn's diabetes data, writes the
pickle (``MODEL_PATH`` by default) and ``<file>.json`` with what was trained and how well
it does on the held-out rows.
"""

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from sklearn.model_selection import train_test_split

from services.common.settings import get_settings
from services.model_api.modelstore import save_model


def train(out: Path, seed: int = 42) -> dict[str, Any]:
    dataset = load_diabetes()
    x_train, x_test, y_train, y_test = train_test_split(dataset.data, dataset.target, test_size=0.2, random_state=seed)
    model = LinearRegression().fit(x_train, y_train)
    predicted = model.predict(x_test)
    return save_model(
        model,
        out,
        {
            "model_type": type(model).__name__,
            "params": model.get_params(),
            "sklearn_version": sklearn.__version__,
            "feature_names": list(dataset.feature_names),
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "split": {"test_size": 0.2, "random_state": seed, "train_rows": len(y_train), "test_rows": len(y_test)},
            "metrics": {
                "mae": float(mean_absolute_error(y_test, predicted)),
                "rmse": float(root_mean_squared_error(y_test, predicted)),
                "r2": float(r2_score(y_test, predicted)),
            },
            "target_mean": float(np.mean(y_train)),
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.model_api.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="model file to write (default: MODEL_PATH)")
    parser.add_argument("--seed", type=int, default=42, help="random_state of the train/test split")
    args = parser.parse_args(argv)
    out = args.out or get_settings().MODEL_PATH
    metadata = train(out, args.seed)
    metrics = metadata["metrics"]
    print(
        f"wrote {out} ({metadata['model_type']}, sha256 {metadata['sha256'][:12]}): "
        f"held-out MAE {metrics['mae']:.2f}, RMSE {metrics['rmse']:.2f}, R2 {metrics['r2']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
