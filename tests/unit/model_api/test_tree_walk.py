"""The loss model's trees walked in numpy give scikit-learn's predictions bit for bit, or are not used."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor

from harness.datasets import HOUSE_TARGET, UserModel
from services.model_api.loss_model import LossModel
from services.model_api.modelstore import load_model
from services.model_api.tree_walk import ROWS_MAX, CompiledTrees, compile_trees


def fitted(
    seed: int, categorical: bool, iterations: int = 50, leaves: int = 8
) -> tuple[HistGradientBoostingRegressor, np.ndarray]:
    """A regressor on 4 numeric features (with missing values) and, with ``categorical``, 2
    categorical ones coded 0..k-1 as FeatureSchema.encode codes them; and fresh rows to predict."""
    rng = np.random.default_rng(seed)

    def rows(n: int) -> np.ndarray:
        numeric = rng.normal(size=(n, 4))
        numeric[rng.random((n, 4)) < 0.1] = np.nan
        if not categorical:
            return numeric
        codes = np.column_stack([rng.integers(0, 7, n), rng.integers(0, 40, n)]).astype(float)
        codes[rng.random((n, 2)) < 0.05] = np.nan
        return np.column_stack([numeric, codes])

    x = rows(2000)
    y = np.nan_to_num(x[:, 0]) * 3 + np.nan_to_num(x[:, 1]) ** 2 + rng.normal(size=len(x))
    if categorical:
        y += np.where(np.nan_to_num(x[:, 4]) % 3 == 0, 5.0, 0.0) + np.nan_to_num(x[:, 5]) % 4
    mask = np.array([False] * 4 + [True, True]) if categorical else None
    model = HistGradientBoostingRegressor(
        max_iter=iterations, max_leaf_nodes=leaves, categorical_features=mask, random_state=seed
    ).fit(x, y)
    fresh = rows(300)
    if categorical:
        fresh[::11, 4] = -1.0  # a category the schema has not seen (UNSEEN)
        fresh[::13, 5] = 45.0  # a code the model never saw in fit
    return model, fresh


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("categorical", [False, True])
def test_the_walk_gives_scikit_learns_predictions_bit_for_bit(seed: int, categorical: bool) -> None:
    model, fresh = fitted(seed, categorical, iterations=30 + 20 * seed, leaves=8 + 8 * seed)
    trees = compile_trees(model)
    assert isinstance(trees, CompiledTrees), trees
    for n in (1, 2, 17, ROWS_MAX, len(fresh)):
        assert np.array_equal(trees.predict(fresh[:n]), model.predict(fresh[:n])), n


def test_a_model_that_is_not_a_histogram_booster_is_not_compiled() -> None:
    forest = RandomForestRegressor(n_estimators=3, random_state=0).fit(np.eye(4), np.arange(4.0))
    assert isinstance(compile_trees(forest), str)


def test_a_walk_that_strays_from_scikit_learn_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The self-check is what guards the use of scikit-learn's internals: a walk that differs
    anywhere (here: ties go right where scikit-learn sends them left) is not used."""
    model, _ = fitted(0, False)
    original = CompiledTrees.predict

    def ties_go_right(self: CompiledTrees, x: np.ndarray) -> np.ndarray:
        shifted = CompiledTrees(**{**self.__dict__, "threshold": np.nextafter(self.threshold, -np.inf)})
        return original(shifted, x)

    monkeypatch.setattr(CompiledTrees, "predict", ties_go_right)
    why = compile_trees(model)
    assert isinstance(why, str) and "did not give scikit-learn's predictions" in why


def test_the_demo_loss_model_estimates_with_the_walk_and_the_same_numbers(model_path: Path) -> None:
    loss = load_model(model_path).loss
    assert isinstance(loss, LossModel)
    assert isinstance(loss.compiled, CompiledTrees)
    rng = np.random.default_rng(5)
    rows = rng.normal(0, 0.05, size=(ROWS_MAX + 50, len(loss.schema))).tolist()
    predictions = rng.normal(150, 60, size=len(rows)).tolist()
    # Through the walk (a few rows) and through scikit-learn (more than ROWS_MAX): both equal scikit-learn's own.
    for n in (1, 9, ROWS_MAX, len(rows)):
        expected = np.maximum(loss.model.predict(loss.inputs(np.array(rows[:n]), predictions[:n])), 0.0)
        assert loss.estimate(rows[:n], predictions[:n]) == expected.tolist()


def test_a_registered_model_with_categorical_features_has_its_loss_model_walked(house: UserModel) -> None:
    """The house-prices Pipeline (numeric and categorical columns), registered as a user does: its
    loss model's trees split categories, and the walk still gives scikit-learn's numbers."""
    loss = load_model(house.model_path).loss
    assert isinstance(loss, LossModel)
    assert isinstance(loss.compiled, CompiledTrees), loss.compiled
    reference = pd.read_csv(house.reference_path).drop(columns=[HOUSE_TARGET]).head(60)
    records = reference.astype(object).where(reference.notna(), None).to_dict("records")  # missing: null, as JSON sends it
    rows = [loss.schema.row(record) for record in records]
    predictions = np.linspace(1e5, 5e5, len(rows)).tolist()
    expected = np.maximum(loss.model.predict(loss.inputs(loss.schema.encode(rows), predictions)), 0.0)
    assert loss.estimate(rows, predictions) == expected.tolist()
