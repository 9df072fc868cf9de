import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from services.model_api.modelstore import ModelFileError, load_model, metadata_path, save_model


@pytest.fixture(scope="module")
def model() -> LinearRegression:
    features, targets = load_diabetes(return_X_y=True)
    return LinearRegression().fit(features, targets)


def test_metadata_lives_beside_the_model_as_dot_json(tmp_path: Path) -> None:
    assert metadata_path(tmp_path / "myfile.pkl") == tmp_path / "myfile.pkl.json"


def test_save_writes_the_pickle_and_its_metadata_with_the_files_sha256(
    tmp_path: Path, model: LinearRegression
) -> None:
    path = tmp_path / "models" / "m.pkl"
    returned = save_model(model, path, {"model_type": "LinearRegression", "note": "x"})
    data = path.read_bytes()
    on_disk = json.loads((tmp_path / "models" / "m.pkl.json").read_text())
    assert on_disk["sha256"] == hashlib.sha256(data).hexdigest()
    assert on_disk["model_type"] == "LinearRegression" and on_disk["note"] == "x"
    assert returned == on_disk
    assert isinstance(pickle.loads(data), LinearRegression)  # noqa: S301 - our own file


def test_load_returns_a_model_that_predicts_the_same(tmp_path: Path, model: LinearRegression) -> None:
    path = tmp_path / "m.pkl"
    save_model(model, path, {"model_type": "LinearRegression"})
    loaded, metadata = load_model(path)
    rows = load_diabetes(return_X_y=True)[0][:25]
    np.testing.assert_array_equal(loaded.predict(rows), model.predict(rows))
    assert metadata["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert metadata["model_type"] == "LinearRegression"


def test_load_without_a_sidecar_still_gives_the_sha256(tmp_path: Path, model: LinearRegression) -> None:
    path = tmp_path / "bare.pkl"
    path.write_bytes(pickle.dumps(model))
    loaded, metadata = load_model(path)
    assert metadata == {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert loaded.n_features_in_ == 10


def test_the_sha256_is_of_the_file_even_if_the_sidecar_says_otherwise(tmp_path: Path, model: LinearRegression) -> None:
    path = tmp_path / "m.pkl"
    save_model(model, path, {})
    metadata_path(path).write_text(json.dumps({"sha256": "0" * 64, "model_type": "LinearRegression"}))
    _, metadata = load_model(path)
    assert metadata["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_missing_model_file_names_the_path_and_the_train_command(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "myfile.pkl"
    with pytest.raises(ModelFileError) as exc:
        load_model(path)
    message = str(exc.value)
    assert str(path) in message
    assert "python -m services.model_api.train" in message
    assert "MODEL_PATH" in message


def test_a_file_that_is_not_a_pickle_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pkl"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(ModelFileError, match="garbage.pkl"):
        load_model(path)


def test_a_broken_sidecar_is_refused_naming_it(tmp_path: Path, model: LinearRegression) -> None:
    path = tmp_path / "m.pkl"
    save_model(model, path, {})
    metadata_path(path).write_text("{not json")
    with pytest.raises(ModelFileError, match=r"m\.pkl\.json"):
        load_model(path)


def test_a_folder_instead_of_a_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "a_folder.pkl"
    path.mkdir()
    with pytest.raises(ModelFileError, match="a_folder.pkl"):
        load_model(path)
