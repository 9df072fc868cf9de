"""register: a user's own model with its reference file — a Pipeline over a DataFrame with named numeric
and categorical columns, a bare estimator fed arrays, a model served elsewhere (a profile) — the
schema, metrics and reference it records, and every refusal naming what is wrong."""

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from harness.datasets import HOUSE_FEATURES, UserModel, house_model, house_prices, write_user_model
from services.common.reference import ROWS_MAX, ReferenceTable, reference_path
from services.common.registration import ELSEWHERE
from services.model_api.modelstore import ModelFileError, load_model
from services.model_api.register import RegisterError, main, register, register_elsewhere


@pytest.fixture
def house(tmp_path: Path) -> UserModel:
    return write_user_model(tmp_path, "house")


def reference_frame(user: UserModel) -> pd.DataFrame:
    return pd.read_csv(user.reference_path)


def test_a_registered_pipeline_loads_verified_and_predicts_as_pickled(house: UserModel) -> None:
    with pytest.raises(ModelFileError, match=r"house\.pkl"):
        load_model(house.model_path)  # not vouched for yet
    metadata, notes = register(house.model_path, house.reference_path, "price")
    assert notes == []
    loaded = load_model(house.model_path)
    assert loaded.verified and loaded.warnings == () and loaded.metadata == metadata
    assert metadata["sha256"] == hashlib.sha256(house.model_path.read_bytes()).hexdigest()
    rows = house_prices(20, seed=9)
    assert loaded.predictor is not None
    by_name = rows[list(HOUSE_FEATURES)].astype(object).where(rows[list(HOUSE_FEATURES)].notna(), None).to_dict("records")
    served = loaded.predictor.predict([loaded.schema.row(body) for body in by_name])
    np.testing.assert_allclose(served, house.model.predict(rows[list(HOUSE_FEATURES)]), rtol=1e-12)


def test_the_schema_is_the_files_columns_in_the_models_order_with_kinds_categories_and_missing_shares(house: UserModel) -> None:
    metadata, _ = register(house.model_path, house.reference_path, "price")
    frame = reference_frame(house)
    features = metadata["schema"]["features"]
    assert [f["name"] for f in features] == list(house.model.feature_names_in_) == metadata["feature_names"]
    assert {f["name"]: f["kind"] for f in features} == {
        "sqft": "numeric", "city": "categorical", "built_year": "numeric", "channel": "categorical", "garden_m2": "numeric"
    }  # fmt: skip
    by_name = {f["name"]: f for f in features}
    assert by_name["city"]["categories"] == frame["city"].value_counts().index.tolist()  # the most frequent first
    assert set(by_name["channel"]["categories"]) == {"web", "agent", "app"}
    assert by_name["garden_m2"]["missing_share"] == pytest.approx(frame["garden_m2"].isna().mean())
    assert by_name["sqft"]["missing_share"] == 0.0
    assert metadata["schema"]["target"] == "price"


def test_the_metrics_and_baseline_are_those_of_every_row_of_the_file(house: UserModel) -> None:
    metadata, _ = register(house.model_path, house.reference_path, "price")
    frame = reference_frame(house)
    errors = frame["price"] - house.model.predict(frame[list(HOUSE_FEATURES)])
    assert metadata["metrics"]["mae"] == pytest.approx(errors.abs().mean(), rel=1e-9)
    assert metadata["metrics"]["rmse"] == pytest.approx(np.sqrt((errors**2).mean()), rel=1e-9)
    r2 = 1 - (errors**2).sum() / ((frame["price"] - frame["price"].mean()) ** 2).sum()
    assert metadata["metrics"]["r2"] == pytest.approx(r2, rel=1e-9)
    assert metadata["metrics"]["rows"] == len(frame) and metadata["metrics"]["unpredicted"] == 0
    assert metadata["target_mean"] == pytest.approx(frame["price"].mean(), rel=1e-12)


def test_the_reference_holds_the_rows_their_targets_and_the_models_predictions(house: UserModel) -> None:
    metadata, _ = register(house.model_path, house.reference_path, "price")
    data = reference_path(house.model_path).read_bytes()
    assert metadata["reference"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert metadata["reference"]["file"] == "house.pkl.reference.parquet"
    stored = pd.read_parquet(reference_path(house.model_path))  # a plain Parquet table a user can read
    frame = reference_frame(house)
    assert list(stored.columns) == [*house.model.feature_names_in_, "__target__", "__prediction__"]
    assert len(stored) == len(frame) == metadata["reference"]["rows"]
    pd.testing.assert_series_equal(stored["__target__"], frame["price"], check_names=False)
    np.testing.assert_allclose(stored["__prediction__"], house.model.predict(frame[list(HOUSE_FEATURES)]), rtol=1e-12)
    assert stored["garden_m2"].isna().sum() == frame["garden_m2"].isna().sum()
    assert stored["city"].tolist() == frame["city"].tolist()


def test_a_parquet_reference_registers_as_the_csv_does(house: UserModel, tmp_path: Path) -> None:
    from_csv, _ = register(house.model_path, house.reference_path, "price")
    parquet = tmp_path / "reference.parquet"
    reference_frame(house).to_parquet(parquet)
    from_parquet, _ = register(house.model_path, parquet, "price")
    assert from_parquet["schema"] == from_csv["schema"]
    assert from_parquet["metrics"]["mae"] == pytest.approx(from_csv["metrics"]["mae"], rel=1e-12)


def test_a_large_file_keeps_a_sample_as_reference_and_scores_every_row(tmp_path: Path) -> None:
    user = write_user_model(tmp_path, "house", reference_rows=ROWS_MAX + 2000)
    metadata, _ = register(user.model_path, user.reference_path, "price")
    assert metadata["metrics"]["rows"] == ROWS_MAX + 2000
    assert metadata["reference"]["rows"] == ROWS_MAX == len(pd.read_parquet(reference_path(user.model_path)))
    assert f"{ROWS_MAX:,} of {ROWS_MAX + 2000:,} rows" in metadata["reference"]["source"]


def test_columns_the_model_was_not_fitted_on_are_refused_naming_them_unless_ignored(house: UserModel, tmp_path: Path) -> None:
    frame = reference_frame(house)
    frame.insert(0, "listing_id", range(len(frame)))
    widened = tmp_path / "with_id.csv"
    frame.drop(columns="channel").to_csv(widened, index=False)
    with pytest.raises(RegisterError) as refused:
        register(house.model_path, widened, "price")
    message = str(refused.value)
    assert "missing from the file (the model needs them): channel" in message
    assert "extra in the file (the model was not fitted on them): listing_id" in message and "--ignore" in message
    frame.to_csv(widened, index=False)
    metadata, _ = register(house.model_path, widened, "price", ignore=["listing_id"])
    assert "listing_id" not in metadata["feature_names"]


def test_a_target_column_that_is_not_there_or_not_numeric_is_refused_naming_it(house: UserModel, tmp_path: Path) -> None:
    with pytest.raises(RegisterError, match="no column 'cost'"):
        register(house.model_path, house.reference_path, "cost")
    frame = reference_frame(house)
    frame["price"] = "expensive"
    text = tmp_path / "text_target.csv"
    frame.to_csv(text, index=False)
    with pytest.raises(RegisterError, match="target column 'price' is not numeric"):
        register(house.model_path, text, "price")


def test_rows_without_a_target_are_left_out_and_said(house: UserModel, tmp_path: Path) -> None:
    frame = reference_frame(house)
    frame.loc[:9, "price"] = np.nan
    holed = tmp_path / "holed.csv"
    frame.to_csv(holed, index=False)
    metadata, notes = register(house.model_path, holed, "price")
    assert metadata["metrics"]["rows"] == len(frame) - 10
    assert any("10 rows without a finite 'price' were left out" in note for note in notes)


def test_rows_the_model_refuses_are_counted_and_said_and_the_rest_scored(tmp_path: Path) -> None:
    """A model without an imputer raises on a row with a missing value: that row is not scored."""
    frame = house_prices(600, seed=4)
    numbers = ["sqft", "built_year"]
    model = LinearRegression().fit(frame[numbers].iloc[:300], frame["price"].iloc[:300])
    model_path, reference = tmp_path / "strict.pkl", tmp_path / "ref.csv"
    model_path.write_bytes(pickle.dumps(model))
    rest = frame[[*numbers, "price"]].iloc[300:].reset_index(drop=True)
    rest.loc[[3, 7], "sqft"] = np.nan
    rest.to_csv(reference, index=False)
    metadata, notes = register(model_path, reference, "price")
    assert metadata["metrics"]["rows"] == len(rest) - 2 and metadata["metrics"]["unpredicted"] == 2
    assert any("the model refused 2 rows (first: ValueError" in note for note in notes)
    rest["sqft"] = np.nan
    rest.to_csv(reference, index=False)
    with pytest.raises(RegisterError, match="refused every row of the reference file: ValueError"):
        register(model_path, reference, "price")


def diabetes_csv(path: Path) -> Path:
    frame = load_diabetes(as_frame=True).frame
    frame.iloc[300:].to_csv(path, index=False)
    return path


def test_a_bare_estimator_takes_the_files_columns_in_the_files_order(tmp_path: Path) -> None:
    features, targets = load_diabetes(return_X_y=True)
    model = make_pipeline(StandardScaler(), SVR(C=50.0)).fit(features[:300], targets[:300])  # fitted on arrays: no names
    path = tmp_path / "svr.pkl"
    path.write_bytes(pickle.dumps(model))
    metadata, _ = register(path, diabetes_csv(tmp_path / "diabetes.csv"), "target")
    assert metadata["feature_names"] == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    errors = targets[300:] - model.predict(features[300:])
    assert metadata["metrics"]["mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-9)
    loaded = load_model(path)
    assert loaded.predictor is not None
    np.testing.assert_allclose(loaded.predictor.predict(features[:5].tolist()), model.predict(features[:5]), rtol=1e-12)


def test_a_bare_estimator_for_another_number_of_features_is_refused_naming_both(tmp_path: Path) -> None:
    features, targets = load_diabetes(return_X_y=True)
    path = tmp_path / "narrow.pkl"
    path.write_bytes(pickle.dumps(SVR().fit(features[:, :4], targets)))
    with pytest.raises(
        RegisterError, match=r"the model expects 4 features .* the reference file has 10 feature columns: age, sex"
    ):
        register(path, diabetes_csv(tmp_path / "diabetes.csv"), "target")
    assert not path.with_name("narrow.pkl.json").exists()


def test_a_model_served_elsewhere_gets_a_profile_with_the_files_predictions(tmp_path: Path) -> None:
    frame = house_prices(800, seed=5)
    model = house_model(house_prices(1000, seed=6))
    frame["their_prediction"] = model.predict(frame[list(HOUSE_FEATURES)])
    reference = tmp_path / "logged.parquet"
    frame.to_parquet(reference)
    out = tmp_path / "external.pkl"
    metadata, notes = register_elsewhere(out, reference, "price", "their_prediction", version="house-v3")
    assert notes == [] and not out.exists()  # a profile: no model file
    assert metadata["served"] == ELSEWHERE and metadata["model_version"] == "house-v3"
    assert metadata["feature_names"] == list(HOUSE_FEATURES)  # the file's order; the prediction column is no feature
    errors = frame["price"] - frame["their_prediction"]
    assert metadata["metrics"]["mae"] == pytest.approx(errors.abs().mean(), rel=1e-9)
    loaded = load_model(out)
    assert loaded.predictor is None and loaded.version == "house-v3" and loaded.schema.names == HOUSE_FEATURES
    assert loaded.unservable is not None and "served elsewhere" in loaded.unservable and "POST /predictions" in loaded.unservable
    table = ReferenceTable.from_parquet(reference_path(out).read_bytes(), loaded.schema)
    np.testing.assert_allclose(table.prediction, frame["their_prediction"], rtol=1e-12)


def test_the_command_line_registers_and_reports(house: UserModel, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(house.model_path), "--reference", str(house.reference_path), "--target", "price"]) == 0
    out = capsys.readouterr().out
    assert f"registered {house.model_path} (Pipeline" in out and "5 features, 2 categorical" in out and "MAE" in out
    assert load_model(house.model_path).verified


def test_the_command_line_makes_a_profile_at_model_path_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.common.settings import get_settings

    frame = house_prices(300, seed=5)
    frame["p"] = frame["price"] * 1.1
    reference = tmp_path / "logged.csv"
    frame.to_csv(reference, index=False)
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "theirs.pkl"))
    get_settings.cache_clear()
    try:
        assert main(["--reference", str(reference), "--target", "price", "--prediction-column", "p"]) == 0
    finally:
        get_settings.cache_clear()
    assert json.loads((tmp_path / "theirs.pkl.json").read_text())["served"] == "elsewhere"
    assert "served elsewhere" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--reference", "r.csv", "--target", "y"], "give MODEL, or --prediction-column"),
        (["m.pkl", "--reference", "r.csv", "--target", "y", "--prediction-column", "p"], "not both"),
        (["m.pkl", "--target", "y"], "--reference"),
    ],
)
def test_the_command_line_refuses_what_does_not_add_up(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp: (tmp / "nope.pkl", tmp / "ref.csv"), "nope.pkl does not exist"),
        (lambda tmp: (tmp / "house.pkl", tmp / "nope.csv"), "the reference file .*nope.csv does not exist"),
        (lambda tmp: (tmp / "house.pkl", tmp / "ref.xlsx"), "neither CSV .* nor Parquet"),
    ],
)
@pytest.mark.usefixtures("house")
def test_the_command_line_says_what_is_wrong_with_a_missing_or_unknown_file(
    tmp_path: Path, make: Any, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model, reference = make(tmp_path)
    assert main([str(model), "--reference", str(reference), "--target", "price"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("register: ")
    import re

    assert re.search(says, err), err


def test_a_model_from_another_sklearn_version_is_registered_with_that_version(house: UserModel) -> None:
    current = sklearn.__version__.encode()
    older = b"0" * (len(current) - 2) + b".1"
    house.model_path.write_bytes(house.model_path.read_bytes().replace(current, older))
    metadata, notes = register(house.model_path, house.reference_path, "price")
    assert metadata["sklearn_version"] == older.decode()
    assert notes and all("InconsistentVersionWarning" in note for note in notes)
    assert any(older.decode() in w for w in load_model(house.model_path).warnings)


@pytest.fixture
def classifier(tmp_path: Path) -> tuple[Path, Path]:
    """A LogisticRegression fitted on the diabetes rows: it "predicts" class labels."""
    features, targets = load_diabetes(return_X_y=True)
    path = tmp_path / "classifier.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression(max_iter=200).fit(features, targets > 140)))
    return path, diabetes_csv(tmp_path / "diabetes.csv")


def test_a_classifier_is_not_registered_and_says_why_and_how_to_insist(
    classifier: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, reference = classifier
    with pytest.raises(ModelFileError, match=r"LogisticRegression is a classifier"):
        register(model, reference, "target")
    assert not model.with_name("classifier.pkl.json").exists()
    assert main([str(model), "--reference", str(reference), "--target", "target"]) == 1
    err = capsys.readouterr().err
    assert str(model) in err and "--not-a-regressor" in err


def test_a_non_regressor_registered_with_the_override_loads(classifier: tuple[Path, Path]) -> None:
    model, reference = classifier
    assert main([str(model), "--reference", str(reference), "--target", "target", "--not-a-regressor"]) == 0
    loaded = load_model(model)
    assert loaded.verified and loaded.metadata["not_a_regressor_accepted"] is True


def test_model_api_refuses_a_classifier_loaded_unverified_too(classifier: tuple[Path, Path]) -> None:
    """MODEL_ALLOW_UNVERIFIED vouches for the file's origin, not for what it predicts."""
    with pytest.raises(ModelFileError, match="is a classifier"):
        load_model(classifier[0], allow_unverified=True)
