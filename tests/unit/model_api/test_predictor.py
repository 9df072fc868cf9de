import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from services.model_api.predictor import Predictor


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
    predictions = Predictor(model, "v1").predict(rows)
    expected = model.predict(features[:50])
    assert len(predictions) == 50
    assert all(type(p) is float for p in predictions)
    np.testing.assert_allclose(predictions, expected, rtol=1e-12, atol=1e-9)


def test_one_row_gives_one_prediction(model: LinearRegression, diabetes: tuple[np.ndarray, np.ndarray]) -> None:
    features, _ = diabetes
    [value] = Predictor(model, "v1").predict([features[7].tolist()])
    assert value == pytest.approx(float(model.predict(features[7:8])[0]), rel=1e-12)


def test_prediction_by_hand_from_the_coefficients(model: LinearRegression) -> None:
    row = [0.01 * i for i in range(10)]
    expected = float(np.dot(model.coef_, row) + model.intercept_)
    assert Predictor(model, "v1").predict([row]) == [pytest.approx(expected, rel=1e-12)]


def test_rows_may_be_tuples_of_ints(model: LinearRegression) -> None:
    row = (0, 1, 0, 0, 0, 0, 0, 0, 0, 0)
    expected = float(model.coef_[1] + model.intercept_)
    assert Predictor(model, "v1").predict([row]) == [pytest.approx(expected, rel=1e-12)]


def test_empty_input_gives_no_predictions(model: LinearRegression) -> None:
    assert Predictor(model, "v1").predict([]) == []


def test_the_version_is_kept(model: LinearRegression) -> None:
    assert Predictor(model, "sha-abc").version == "sha-abc"


@pytest.mark.parametrize("n_features", [1, 9, 11])
def test_a_model_for_another_number_of_features_is_refused(n_features: int) -> None:
    rng = np.random.default_rng(0)
    other = LinearRegression().fit(rng.normal(size=(30, n_features)), rng.normal(size=30))
    with pytest.raises(ValueError, match=str(n_features)):
        Predictor(other, "v1")


@pytest.mark.parametrize(
    "not_a_model",
    [None, "model.pkl", {"coef": [1.0] * 10}, object(), LinearRegression()],
    ids=["None", "str", "dict", "object", "unfitted"],
)
def test_something_that_is_not_a_fitted_model_is_refused(not_a_model: object) -> None:
    with pytest.raises(TypeError, match="fitted"):
        Predictor(not_a_model, "v1")
