import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import sklearn
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from services.common.files import metadata_path
from services.model_api.modelstore import ModelFileError, load_model, save_model


@pytest.fixture(scope="module")
def model() -> LinearRegression:
    features, targets = load_diabetes(return_X_y=True)
    return LinearRegression().fit(features, targets)


def test_metadata_lives_beside_the_model_as_dot_json(tmp_path: Path) -> None:
    assert metadata_path(tmp_path / "myfile.pkl") == tmp_path / "myfile.pkl.json"


def test_save_writes_the_pickle_and_its_metadata_with_the_files_sha256(tmp_path: Path, model: LinearRegression) -> None:
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
    loaded = load_model(path)
    rows = load_diabetes(return_X_y=True)[0][:25]
    np.testing.assert_array_equal(loaded.serving.model.predict(rows), model.predict(rows))
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.metadata["sha256"] == sha256
    assert loaded.metadata["model_type"] == "LinearRegression"
    assert loaded.verified and loaded.warnings == ()
    assert loaded.version == sha256[:12]
    assert loaded.path == path


def test_a_file_without_metadata_is_refused_naming_it_its_hash_and_what_to_do(tmp_path: Path, model: LinearRegression) -> None:
    path = tmp_path / "bare.pkl"
    path.write_bytes(pickle.dumps(model))
    with pytest.raises(ModelFileError) as exc:
        load_model(path)
    message = str(exc.value)
    assert str(path) in message and "bare.pkl.json" in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in message
    assert "python -m services.model_api.register" in message
    assert "MODEL_ALLOW_UNVERIFIED=1" in message


def test_a_file_changed_after_its_metadata_is_refused_with_both_hashes(tmp_path: Path, model: LinearRegression) -> None:
    path = tmp_path / "m.pkl"
    expected = save_model(model, path, {"model_type": "LinearRegression"})["sha256"]
    changed = LinearRegression().fit(*load_diabetes(return_X_y=True))
    changed.intercept_ += 1.0
    path.write_bytes(pickle.dumps(changed))
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ModelFileError) as exc:
        load_model(path)
    message = str(exc.value)
    assert str(path) in message
    assert expected in message and actual in message
    assert "python -m services.model_api.train" in message
    assert "MODEL_ALLOW_UNVERIFIED=1" in message


def test_a_file_is_not_unpickled_before_it_is_verified(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    marker = tmp_path / "ran"
    path.write_bytes(pickle.dumps(_TouchOnUnpickle(str(marker))))
    metadata_path(path).write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ModelFileError, match=r"evil\.pkl"):
        load_model(path)
    metadata_path(path).unlink()
    with pytest.raises(ModelFileError, match=r"evil\.pkl"):
        load_model(path)
    assert not marker.exists()


class _TouchOnUnpickle:
    """A pickle that, when loaded, creates a file: the attack the check is there for."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_allow_unverified_loads_a_file_without_metadata_and_says_so(tmp_path: Path, model: LinearRegression) -> None:
    path = tmp_path / "bare.pkl"
    path.write_bytes(pickle.dumps(model))
    loaded = load_model(path, allow_unverified=True)
    assert loaded.metadata == {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert not loaded.verified
    [warning] = loaded.warnings
    assert "bare.pkl" in warning and "MODEL_ALLOW_UNVERIFIED=1" in warning
    assert loaded.serving.model.n_features_in_ == 10


def test_allow_unverified_loads_a_changed_file_with_its_real_sha256(tmp_path: Path, model: LinearRegression) -> None:
    path = tmp_path / "m.pkl"
    save_model(model, path, {})
    metadata_path(path).write_text(json.dumps({"sha256": "0" * 64, "model_type": "LinearRegression"}))
    loaded = load_model(path, allow_unverified=True)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.metadata["sha256"] == actual and loaded.version == actual[:12]
    assert not loaded.verified
    assert any("0" * 64 in w and actual in w for w in loaded.warnings)


def pickled_by_another_sklearn(model: LinearRegression, version: bytes) -> bytes:
    """The model's pickle as if made by scikit-learn ``version`` (same length, so the pickle stays valid)."""
    data = pickle.dumps(model)
    current = sklearn.__version__.encode()
    assert data.count(current) == 1 and len(version) == len(current)
    return data.replace(current, version)


def test_a_model_from_another_sklearn_version_loads_with_a_warning(tmp_path: Path, model: LinearRegression) -> None:
    path = tmp_path / "old.pkl"
    version = b"0" * (len(sklearn.__version__) - 2) + b".1"
    data = pickled_by_another_sklearn(model, version)
    path.write_bytes(data)
    metadata_path(path).write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "sklearn_version": version.decode()}))
    loaded = load_model(path)  # pytest turns warnings into errors: it must be caught, not raised
    assert loaded.verified
    [warning] = loaded.warnings
    assert "InconsistentVersionWarning" in warning
    assert version.decode() in warning and sklearn.__version__ in warning


def test_metadata_naming_another_sklearn_version_gives_a_warning(tmp_path: Path, model: LinearRegression) -> None:
    path = tmp_path / "m.pkl"
    save_model(model, path, {"sklearn_version": "0.24.2"})
    [warning] = load_model(path).warnings
    assert "0.24.2" in warning and sklearn.__version__ in warning and "m.pkl" in warning


@pytest.mark.parametrize("n_features", [3, 11])
def test_a_model_for_another_number_of_features_is_refused_naming_the_file(tmp_path: Path, n_features: int) -> None:
    rng = np.random.default_rng(0)
    other = LinearRegression().fit(rng.normal(size=(30, n_features)), rng.normal(size=30))
    path = tmp_path / "wide.pkl"
    save_model(other, path, {})
    with pytest.raises(ModelFileError) as exc:
        load_model(path)
    message = str(exc.value)
    assert "wide.pkl" in message and f"expects {n_features} features" in message and "10" in message


def test_a_pickle_that_is_no_model_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dict.pkl"
    save_model({"coef": [1.0] * 10}, path, {})
    with pytest.raises(ModelFileError, match=r"dict\.pkl.*fitted"):
        load_model(path)


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
    metadata_path(path).write_text(json.dumps({"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    with pytest.raises(ModelFileError, match=r"garbage\.pkl"):
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
    with pytest.raises(ModelFileError, match=r"a_folder\.pkl"):
        load_model(path)
