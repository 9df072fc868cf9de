import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from services.model_api.modelstore import ModelFileError, load_model
from services.model_api.register import main, register


def users_model() -> Any:
    """A model the project does not train: what a user brings."""
    features, targets = load_diabetes(return_X_y=True)
    return make_pipeline(StandardScaler(), SVR(C=50.0)).fit(features[:300], targets[:300])


@pytest.fixture
def pickled(tmp_path: Path) -> Path:
    path = tmp_path / "mine.pkl"
    path.write_bytes(pickle.dumps(users_model()))
    return path


def test_a_registered_model_loads_verified_and_predicts_as_pickled(pickled: Path) -> None:
    with pytest.raises(ModelFileError, match=r"mine\.pkl"):
        load_model(pickled)
    metadata, warnings = register(pickled)
    assert warnings == []
    loaded = load_model(pickled)
    assert loaded.verified and loaded.warnings == ()
    assert loaded.metadata == metadata
    assert metadata["sha256"] == hashlib.sha256(pickled.read_bytes()).hexdigest()
    features = load_diabetes(return_X_y=True)[0]
    np.testing.assert_array_equal(loaded.predictor.predict(features[:20].tolist()), users_model().predict(features[:20]))


def test_the_metadata_describes_the_users_model_on_the_held_out_rows(pickled: Path) -> None:
    metadata, _ = register(pickled)
    assert metadata == json.loads(pickled.with_name("mine.pkl.json").read_text())
    assert metadata["model_type"] == "Pipeline"
    assert metadata["sklearn_version"] == sklearn.__version__
    assert len(metadata["feature_names"]) == 10
    assert metadata["trained_at"] and metadata["registered_at"]
    features, targets = load_diabetes(return_X_y=True)
    _, x_test, y_train, y_test = train_test_split(features, targets, test_size=0.2, random_state=42)
    errors = y_test - users_model().predict(x_test)
    assert metadata["metrics"]["mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-9)
    assert metadata["metrics"]["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)), rel=1e-9)
    assert metadata["target_mean"] == pytest.approx(np.mean(y_train), rel=1e-12)
    json.dumps(metadata["params"])  # nested estimators are written as text, not refused


def test_a_model_from_another_sklearn_version_is_registered_with_that_version(tmp_path: Path) -> None:
    current = sklearn.__version__.encode()
    older = b"0" * (len(current) - 2) + b".1"
    data = pickle.dumps(users_model())
    path = tmp_path / "old.pkl"
    path.write_bytes(data.replace(current, older))
    metadata, warnings = register(path)
    assert metadata["sklearn_version"] == older.decode()
    assert warnings and all("InconsistentVersionWarning" in w for w in warnings)
    assert any(older.decode() in w for w in load_model(path).warnings)


def test_a_model_for_other_features_is_not_registered(tmp_path: Path) -> None:
    features, targets = load_diabetes(return_X_y=True)
    path = tmp_path / "narrow.pkl"
    path.write_bytes(pickle.dumps(SVR().fit(features[:, :4], targets)))
    with pytest.raises(ModelFileError, match="expects 4 features"):
        register(path)
    assert not path.with_name("narrow.pkl.json").exists()


def test_the_command_line_registers_and_reports(pickled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(pickled)]) == 0
    out = capsys.readouterr().out
    assert f"registered {pickled}" in out and "MAE" in out
    assert load_model(pickled).verified


def test_the_command_line_says_what_is_wrong_with_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.pkl"
    assert main([str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    """A LogisticRegression fitted on the diabetes rows: it "predicts" class labels (here: 1.0 for all that matter)."""
    features, targets = load_diabetes(return_X_y=True)
    path = tmp_path / "classifier.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression(max_iter=200).fit(features, targets > 140)))
    return path


def test_a_classifier_is_not_registered_and_says_why_and_how_to_insist(
    classifier: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ModelFileError, match=r"LogisticRegression is a classifier"):
        register(classifier)
    assert not classifier.with_name("classifier.pkl.json").exists()
    assert main([str(classifier)]) == 1
    err = capsys.readouterr().err
    assert str(classifier) in err and "--not-a-regressor" in err


def test_a_non_regressor_registered_with_the_override_loads(classifier: Path) -> None:
    assert main([str(classifier), "--not-a-regressor"]) == 0
    loaded = load_model(classifier)
    assert loaded.verified and loaded.metadata["not_a_regressor_accepted"] is True


def test_model_api_refuses_a_classifier_loaded_unverified_too(classifier: Path) -> None:
    """MODEL_ALLOW_UNVERIFIED vouches for the file's origin, not for what it predicts."""
    with pytest.raises(ModelFileError, match="is a classifier"):
        load_model(classifier, allow_unverified=True)
