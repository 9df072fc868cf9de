"""The loss model (issue 24): fitted with the reference, beside the model, vouched for by the sidecar."""

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from services.common.estimate import calibration_of, loss_model_path
from services.common.files import metadata_path
from services.common.schema import FeatureSchema
from services.model_api.loss_model import fit_loss_model, out_of_fold
from services.model_api.modelstore import load_model
from services.model_api.register import register, register_elsewhere
from services.model_api.train import train

HALF_NORMAL_MEAN = math.sqrt(2 / math.pi)  # E|Z| for a standard normal Z


def noisy_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = 3 x0 + x1 + noise whose spread grows with x0 (0.5 at x0 = 0, 4.5 at x0 = 1): the error varies."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, 2))
    spread = 0.5 + 4 * x[:, 0]
    return x, 3 * x[:, 0] + x[:, 1] + rng.normal(0, 1, n) * spread, spread


def test_the_estimate_follows_where_the_model_errs_more() -> None:
    x, y, _ = noisy_rows(4000)
    model = LinearRegression().fit(x, y)
    loss = fit_loss_model(FeatureSchema.numeric(["x0", "x1"]), x, y, out_of_fold(model, x, y))
    calm, noisy = np.array([[0.05, 0.5]] * 3), np.array([[0.95, 0.5]] * 3)
    predictions = model.predict(calm).tolist()
    calm_estimate = np.mean(loss.estimate(calm.tolist(), predictions))
    noisy_estimate = np.mean(loss.estimate(noisy.tolist(), model.predict(noisy).tolist()))
    # The expected |error| is the spread times E|Z|: 0.7 · 0.8 ≈ 0.56 and 4.3 · 0.8 ≈ 3.4.
    assert calm_estimate == pytest.approx(0.7 * HALF_NORMAL_MEAN, rel=0.3)
    assert noisy_estimate == pytest.approx(4.3 * HALF_NORMAL_MEAN, rel=0.15)
    assert loss.calibration.rows == 4000 and loss.calibration.residual_sd > 0


def test_train_writes_a_loss_model_the_sidecar_vouches_for(tmp_path: Path) -> None:
    out = tmp_path / "model.pkl"
    metadata = train(out)
    assert loss_model_path(out).exists()
    assert "out of fold" in metadata["loss_model"]["fitted_on"]
    assert calibration_of(metadata) is not None
    loaded = load_model(out)
    assert loaded.estimate_problem is None


def test_a_changed_loss_model_makes_the_estimate_unavailable_not_the_model(tmp_path: Path) -> None:
    out = tmp_path / "model.pkl"
    train(out)
    loss_model_path(out).write_bytes(loss_model_path(out).read_bytes() + b"x")
    loaded = load_model(out)
    assert loaded.predictor is not None  # still serves
    assert loaded.estimate_problem is not None and "changed after it was written" in loaded.estimate_problem


def test_a_sidecar_without_a_loss_model_says_why_there_is_no_estimate(tmp_path: Path) -> None:
    out = tmp_path / "model.pkl"
    train(out)
    sidecar = json.loads(metadata_path(out).read_text())
    del sidecar["loss_model"]
    metadata_path(out).write_text(json.dumps(sidecar))
    problem = load_model(out).estimate_problem
    assert problem is not None and "names no loss model" in problem


def test_register_fits_one_on_held_out_rows_and_a_profile_of_a_model_served_elsewhere_too(tmp_path: Path) -> None:
    x, y, _ = noisy_rows(600, seed=1)
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "city": np.where(x[:, 1] > 0.5, "Lyon", "Paris"), "y": y})
    x_fit, y_fit, _ = noisy_rows(600, seed=2)
    model = LinearRegression().fit(x_fit, y_fit)
    path = tmp_path / "mine.pkl"
    path.write_bytes(pickle.dumps(model))
    frame[["x0", "x1", "y"]].to_csv(tmp_path / "holdout.csv", index=False)
    metadata, _ = register(path, tmp_path / "holdout.csv", "y")
    assert metadata["loss_model"]["calibration"]["rows"] == 600
    assert load_model(path).estimate_problem is None

    frame["predicted"] = model.predict(x)
    frame.to_csv(tmp_path / "logged.csv", index=False)
    profile, _ = register_elsewhere(tmp_path / "elsewhere.pkl", tmp_path / "logged.csv", "y", "predicted")
    assert "loss_model" in profile
    loaded = load_model(tmp_path / "elsewhere.pkl")
    assert loaded.predictor is None and not isinstance(loaded.loss, str)
    estimates = loaded.loss.estimate([[0.9, 0.5, "Lyon"], [0.1, 0.5, "Paris"]], [3.0, 0.8])
    assert estimates[0] > estimates[1]
