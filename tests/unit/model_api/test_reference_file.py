"""The drift reference beside the model file: written by train and register, vouched for by its
sha256 in the sidecar, and every way it can be unusable said plainly (never a model refused for it)."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split

from services.model_api.drift import COLUMNS
from services.model_api.modelstore import load_model
from services.model_api.reference_file import LoadedReference, read_reference
from services.model_api.register import register
from services.model_api.train import train


def training_rows(seed: int = 42) -> np.ndarray:
    features, targets = load_diabetes(return_X_y=True)
    return train_test_split(features, targets, test_size=0.2, random_state=seed)[0]


def test_train_writes_the_training_rows_and_the_models_predictions_on_them(tmp_path: Path) -> None:
    out = tmp_path / "m.pkl"
    metadata = train(out)
    record = metadata["reference"]
    assert record["file"] == "m.pkl.reference.json" and record["rows"] == len(training_rows())
    loaded = read_reference(out, load_model(out).metadata)
    assert isinstance(loaded, LoadedReference)
    rows = training_rows()
    for i, name in enumerate(COLUMNS[:-1]):
        np.testing.assert_array_equal(loaded.reference.columns[name].values, np.sort(rows[:, i]))
    with out.open("rb") as f:
        predictions = pickle.load(f).predict(rows)  # noqa: S301 - the test's own freshly trained file
    np.testing.assert_allclose(loaded.reference.columns["prediction"].values, np.sort(predictions), rtol=1e-12)


def test_register_writes_one_for_the_users_model_too(tmp_path: Path) -> None:
    from sklearn.linear_model import Ridge

    path = tmp_path / "mine.pkl"
    features, targets = load_diabetes(return_X_y=True)
    path.write_bytes(pickle.dumps(Ridge(alpha=1.0).fit(features, targets)))
    metadata, _ = register(path)
    loaded = read_reference(path, metadata)
    assert isinstance(loaded, LoadedReference) and loaded.path == tmp_path / "mine.pkl.reference.json"


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    out = tmp_path / "m.pkl"
    train(out)
    return out


def metadata_of(model: Path) -> dict:
    return json.loads(model.with_name(model.name + ".json").read_text())


def test_a_reference_changed_after_it_was_written_is_not_used(trained: Path) -> None:
    path = trained.with_name("m.pkl.reference.json")
    path.write_bytes(path.read_bytes().replace(b'"rows":353', b'"rows":354'))
    problem = read_reference(trained, metadata_of(trained))
    assert isinstance(problem, str) and "changed after it was written" in problem and "register" in problem
    assert load_model(trained).verified  # the model itself still loads and serves


def test_a_missing_reference_file_or_entry_is_said_plainly(trained: Path) -> None:
    trained.with_name("m.pkl.reference.json").unlink()
    problem = read_reference(trained, metadata_of(trained))
    assert isinstance(problem, str) and "cannot read the drift reference" in problem and "m.pkl.reference.json" in problem
    metadata = {k: v for k, v in metadata_of(trained).items() if k != "reference"}
    problem = read_reference(trained, metadata)
    assert isinstance(problem, str) and "names no drift reference" in problem and "train" in problem


@pytest.mark.parametrize("entry", [{"file": "../elsewhere.json", "sha256": "00"}, {"file": 3}, "m.pkl.reference.json"])
def test_a_reference_entry_that_points_elsewhere_is_refused(trained: Path, entry: object) -> None:
    problem = read_reference(trained, {**metadata_of(trained), "reference": entry})
    assert isinstance(problem, str) and "no usable" in problem
