import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.datasets import load_diabetes
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import train_test_split

from services.model_api.modelstore import load_model
from services.model_api.train import main, train


def reference_model(seed: int = 42) -> LinearRegression:
    """What docs/own-model.md says train does, done here independently."""
    features, targets = load_diabetes(return_X_y=True)
    x_train, _, y_train, _ = train_test_split(features, targets, test_size=0.2, random_state=seed)
    return LinearRegression().fit(x_train, y_train)


def test_train_writes_the_pickle_and_a_sidecar_with_its_sha256(tmp_path: Path) -> None:
    out = tmp_path / "myfile.pkl"
    train(out)
    sidecar = json.loads((tmp_path / "myfile.pkl.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sidecar["model_type"] == "LinearRegression"
    assert sidecar["trained_at"]


def test_the_trained_model_loads_and_predicts_like_a_reference_fit(tmp_path: Path) -> None:
    out = tmp_path / "myfile.pkl"
    train(out)
    model = load_model(out).serving.model
    rows = load_diabetes(return_X_y=True)[0]
    np.testing.assert_allclose(model.predict(rows), reference_model().predict(rows), rtol=1e-9)


def test_the_reported_metrics_are_those_of_the_held_out_rows(tmp_path: Path) -> None:
    metadata = train(tmp_path / "m.pkl")
    features, targets = load_diabetes(return_X_y=True)
    _, x_test, _, y_test = train_test_split(features, targets, test_size=0.2, random_state=42)
    errors = y_test - reference_model().predict(x_test)
    assert metadata["metrics"]["mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-9)
    assert metadata["metrics"]["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)), rel=1e-9)
    r2 = 1 - np.sum(errors**2) / np.sum((y_test - np.mean(y_test)) ** 2)
    assert metadata["metrics"]["r2"] == pytest.approx(r2, rel=1e-9)
    assert metadata["split"]["train_rows"] + metadata["split"]["test_rows"] == len(targets)


def test_training_twice_gives_the_same_model_file(tmp_path: Path) -> None:
    train(tmp_path / "a.pkl")
    train(tmp_path / "b.pkl")
    assert (tmp_path / "a.pkl").read_bytes() == (tmp_path / "b.pkl").read_bytes()


def test_the_seed_changes_the_split(tmp_path: Path) -> None:
    first = train(tmp_path / "a.pkl", seed=1)
    second = train(tmp_path / "b.pkl", seed=2)
    assert first["sha256"] != second["sha256"]
    model = load_model(tmp_path / "b.pkl").serving.model
    rows = load_diabetes(return_X_y=True)[0][:10]
    np.testing.assert_allclose(model.predict(rows), reference_model(seed=2).predict(rows), rtol=1e-9)


def test_the_command_line_writes_where_told(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nested" / "cli.pkl"
    assert main(["--out", str(out)]) == 0
    assert out.exists()
    sidecar = json.loads((tmp_path / "nested" / "cli.pkl.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    printed = capsys.readouterr().out
    assert str(out) in printed
    assert "MAE" in printed


def test_the_command_line_defaults_to_model_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.common.settings import get_settings

    out = tmp_path / "from_env.pkl"
    monkeypatch.setenv("MODEL_PATH", str(out))
    get_settings.cache_clear()
    try:
        assert main([]) == 0
    finally:
        get_settings.cache_clear()
    assert out.exists()
    assert str(out) in capsys.readouterr().out


def test_the_command_line_refuses_an_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--bogus"])
    assert exc.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_the_sidecar_says_what_was_trained_with_what(tmp_path: Path) -> None:
    metadata = train(tmp_path / "m.pkl")
    sidecar = json.loads((tmp_path / "m.pkl.json").read_text())
    assert sidecar == metadata
    assert sidecar["sklearn_version"] == sklearn.__version__
    assert sidecar["feature_names"] == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert sidecar["params"] == LinearRegression().get_params()
    _, _, y_train, _ = train_test_split(*load_diabetes(return_X_y=True), test_size=0.2, random_state=42)
    assert sidecar["target_mean"] == pytest.approx(float(np.mean(y_train)), rel=1e-12)


@pytest.mark.parametrize(
    ("kind", "reference"),
    [
        ("ridge", lambda _seed: Ridge(alpha=0.1)),
        ("random_forest", lambda seed: RandomForestRegressor(n_estimators=50, min_samples_leaf=3, random_state=seed, n_jobs=1)),
    ],
)
def test_other_kinds_of_model_fit_like_a_reference(tmp_path: Path, kind: str, reference: Callable[[int], Any]) -> None:
    out = tmp_path / f"{kind}.pkl"
    assert main(["--out", str(out), "--model", kind, "--seed", "7"]) == 0
    loaded = load_model(out)
    features, targets = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(features, targets, test_size=0.2, random_state=7)
    expected = reference(7).fit(x_train, y_train)
    assert loaded.metadata["model_type"] == type(expected).__name__
    assert loaded.metadata["params"]["random_state" if kind == "random_forest" else "alpha"] == (
        7 if kind == "random_forest" else 0.1
    )
    np.testing.assert_allclose(loaded.serving.model.predict(features), expected.predict(features), rtol=1e-9)
    mae = float(np.mean(np.abs(y_test - expected.predict(x_test))))
    assert loaded.metadata["metrics"]["mae"] == pytest.approx(mae, rel=1e-9)


def test_the_command_line_refuses_an_unknown_kind_of_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--model", "xgboost"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "xgboost" in err and "random_forest" in err


def test_the_demo_schema_is_the_ten_numeric_diabetes_columns_and_its_reference_every_row(tmp_path: Path) -> None:
    metadata = train(tmp_path / "m.pkl")
    features = metadata["schema"]["features"]
    assert [f["name"] for f in features] == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert {f["kind"] for f in features} == {"numeric"} and metadata["served"] == "here"
    stored = pd.read_parquet(tmp_path / "m.pkl.reference.parquet")
    frame = load_diabetes(as_frame=True).frame
    assert len(stored) == len(frame) == metadata["reference"]["rows"]  # the population the demo samples
    np.testing.assert_array_equal(stored["__target__"], frame["target"])
    np.testing.assert_allclose(
        stored["__prediction__"], reference_model().predict(frame.drop(columns="target").to_numpy()), rtol=1e-9
    )


def test_if_needed_trains_only_where_no_model_or_profile_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pkl"
    assert main(["--out", str(out), "--if-needed"]) == 0 and out.exists()
    first = out.read_bytes()
    out.with_name("m.pkl.json").write_text(json.dumps({**json.loads(out.with_name("m.pkl.json").read_text()), "note": "mine"}))
    assert main(["--out", str(out), "--if-needed"]) == 0
    assert "a registered model; not trained again" in capsys.readouterr().out
    assert "note" in json.loads(out.with_name("m.pkl.json").read_text())  # left as it was
    # a profile of a model served elsewhere (a sidecar, no model file) is kept too
    profile = tmp_path / "theirs.pkl"
    profile.with_name("theirs.pkl.json").write_text(json.dumps({"served": "elsewhere"}))
    assert main(["--out", str(profile), "--if-needed"]) == 0 and not profile.exists()
    # the demo model of a release before schemas is trained again: its drift and demo need the new reference
    sidecar = json.loads(out.with_name("m.pkl.json").read_text())
    del sidecar["schema"]
    out.with_name("m.pkl.json").write_text(json.dumps(sidecar))
    assert main(["--out", str(out), "--if-needed"]) == 0
    assert "schema" in json.loads(out.with_name("m.pkl.json").read_text()) and out.read_bytes() == first


def test_if_needed_trains_again_the_demo_of_a_release_before_the_loss_model(tmp_path: Path) -> None:
    out = tmp_path / "m.pkl"
    assert main(["--out", str(out), "--if-needed"]) == 0
    sidecar = json.loads(out.with_name("m.pkl.json").read_text())
    del sidecar["loss_model"]
    out.with_name("m.pkl.json").write_text(json.dumps(sidecar))
    assert main(["--out", str(out), "--if-needed"]) == 0
    assert "loss_model" in json.loads(out.with_name("m.pkl.json").read_text())
    # a registered model of the same type without one is the user's: left as it is
    sidecar = {**json.loads(out.with_name("m.pkl.json").read_text()), "registered_at": "2026-01-01T00:00:00+00:00"}
    del sidecar["loss_model"]
    out.with_name("m.pkl.json").write_text(json.dumps(sidecar))
    assert main(["--out", str(out), "--if-needed"]) == 0
    assert "loss_model" not in json.loads(out.with_name("m.pkl.json").read_text())
