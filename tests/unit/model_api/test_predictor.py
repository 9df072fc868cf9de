import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline

from harness.datasets import HOUSE_FEATURES, house_model, house_prices, wide_model, wide_numeric
from services.common.schema import DIABETES, FeatureSchema, FeatureSpec
from services.model_api.predictor import Predictor, schema_problem


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray]:
    return load_diabetes(return_X_y=True)


@pytest.fixture(scope="module")
def model(diabetes: tuple[np.ndarray, np.ndarray]) -> LinearRegression:
    features, targets = diabetes
    return LinearRegression().fit(features, targets)


def test_predictions_equal_the_models_own(model: LinearRegression, diabetes: tuple[np.ndarray, np.ndarray]) -> None:
    features, _ = diabetes
    rows = features[:50].tolist()
    predictions = Predictor(model, "v1", DIABETES).predict(rows)
    expected = model.predict(features[:50])
    assert len(predictions) == 50
    assert all(type(p) is float for p in predictions)
    np.testing.assert_allclose(predictions, expected, rtol=1e-12, atol=1e-9)


def test_one_row_gives_one_prediction(model: LinearRegression, diabetes: tuple[np.ndarray, np.ndarray]) -> None:
    features, _ = diabetes
    [value] = Predictor(model, "v1", DIABETES).predict([features[7].tolist()])
    assert value == pytest.approx(float(model.predict(features[7:8])[0]), rel=1e-12)


def test_prediction_by_hand_from_the_coefficients(model: LinearRegression) -> None:
    row = [0.01 * i for i in range(10)]
    expected = float(np.dot(model.coef_, row) + model.intercept_)
    assert Predictor(model, "v1", DIABETES).predict([row]) == [pytest.approx(expected, rel=1e-12)]


def test_rows_may_be_tuples_of_ints(model: LinearRegression) -> None:
    row = (0, 1, 0, 0, 0, 0, 0, 0, 0, 0)
    expected = float(model.coef_[1] + model.intercept_)
    assert Predictor(model, "v1", DIABETES).predict([row]) == [pytest.approx(expected, rel=1e-12)]


def test_empty_input_gives_no_predictions(model: LinearRegression) -> None:
    assert Predictor(model, "v1", DIABETES).predict([]) == []


def test_the_version_is_kept(model: LinearRegression) -> None:
    assert Predictor(model, "sha-abc", DIABETES).version == "sha-abc"


@pytest.mark.parametrize("n_features", [1, 9, 11])
def test_a_model_for_another_number_of_features_is_refused(n_features: int) -> None:
    rng = np.random.default_rng(0)
    other = LinearRegression().fit(rng.normal(size=(30, n_features)), rng.normal(size=30))
    with pytest.raises(ValueError, match=str(n_features)):
        Predictor(other, "v1", DIABETES)


@pytest.mark.parametrize(
    "not_a_model",
    [None, "model.pkl", {"coef": [1.0] * 10}, object(), LinearRegression()],
    ids=["None", "str", "dict", "object", "unfitted"],
)
def test_something_that_is_not_a_fitted_model_is_refused(not_a_model: object) -> None:
    with pytest.raises(TypeError, match="fitted"):
        Predictor(not_a_model, "v1", DIABETES)


HOUSE = FeatureSchema(
    (
        FeatureSpec("sqft", "numeric"),
        FeatureSpec("city", "categorical", ("Paris", "Lyon", "Lille", "Nice")),
        FeatureSpec("built_year", "numeric"),
        FeatureSpec("channel", "categorical", ("web", "agent", "app")),
        FeatureSpec("garden_m2", "numeric"),
    )
)


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return house_model(house_prices(1500, seed=1))


def test_a_model_fitted_on_a_dataframe_is_fed_one_with_its_columns_and_dtypes(pipeline: Pipeline) -> None:
    frame = house_prices(40, seed=8)
    rows = [HOUSE.row([None if pd.isna(v) else v for v in row]) for row in frame[list(HOUSE_FEATURES)].itertuples(index=False)]
    predictor = Predictor(pipeline, "v1", HOUSE)
    fed = predictor.model_input(rows)
    assert list(fed.columns) == list(HOUSE_FEATURES)
    assert fed["sqft"].dtype == np.float64 and pd.api.types.is_string_dtype(fed["city"])
    assert fed["garden_m2"].isna().sum() == frame["garden_m2"].isna().sum()
    np.testing.assert_allclose(np.array(predictor.predict(rows)), pipeline.predict(frame[list(HOUSE_FEATURES)]), rtol=1e-12)


@pytest.mark.parametrize("count", [1, 14, 300])
def test_a_wide_numeric_dataframe_model_gets_the_frame_and_the_predictions_of_one_built_column_by_column(count: int) -> None:
    """100 named numeric features, the frame built as one float block: the same columns, dtypes, index
    and NaNs as a frame built a column at a time, and the model's predictions on it equal to the last bit."""
    train = wide_numeric(500, seed=3)
    names = [name for name in train.columns if name != "y"]
    pipeline = wide_model(train)
    rows: list[list[float | None]] = wide_numeric(count, seed=4)[names].to_numpy().tolist()
    predictor = Predictor(pipeline, "v1", FeatureSchema.numeric(names))

    def by_column(rows: list[list[float | None]]) -> pd.DataFrame:
        return pd.DataFrame(
            {name: pd.Series(column, dtype=float) for name, column in zip(names, zip(*rows, strict=True), strict=True)}
        )

    assert predictor.predict(rows) == pipeline.predict(by_column(rows)).tolist()
    np.testing.assert_allclose(predictor.predict(rows), pipeline.predict(pd.DataFrame(rows, columns=names)), rtol=1e-12)
    rows[0][7] = None  # a missing value is NaN in its column, as it was
    pd.testing.assert_frame_equal(predictor.model_input(rows), by_column(rows))
    pd.testing.assert_frame_equal(predictor.model_input([]), by_column(rows).iloc[:0])


def test_an_unseen_category_is_served_by_a_model_that_ignores_it(pipeline: Pipeline) -> None:
    [value] = Predictor(pipeline, "v1", HOUSE).predict([[1500.0, "Marseille", 1990.0, "web", None]])
    assert np.isfinite(value)


def test_rows_the_model_raises_on_are_refused_alone_with_its_reason() -> None:
    model = LinearRegression().fit(np.arange(20.0).reshape(10, 2), np.arange(10.0))  # no imputer: NaN makes it raise
    schema = FeatureSchema.numeric(["a", "b"])
    outcomes = Predictor(model, "v1", schema).predict_each([[1.0, 2.0], [None, 2.0], [3.0, 4.0], [5.0, None], [6.0, 7.0]])
    assert [isinstance(o, str) for o in outcomes] == [False, True, False, True, False]
    assert "ValueError" in str(outcomes[1]) and "NaN" in str(outcomes[1])
    np.testing.assert_allclose(
        np.array([outcomes[i] for i in (0, 2, 4)], dtype=float), model.predict(np.array([[1.0, 2.0], [3.0, 4.0], [6.0, 7.0]]))
    )


def test_a_dataframe_model_for_other_columns_says_which(pipeline: Pipeline) -> None:
    other = FeatureSchema((*HOUSE.features[:4], FeatureSpec("pool", "numeric")))
    problem = schema_problem(pipeline, other)
    assert (
        problem is not None and "garden_m2, which the schema lacks" in problem and "pool, which it was not fitted on" in problem
    )
    with pytest.raises(ValueError, match="pool"):
        Predictor(pipeline, "v1", other)
