"""The drift tests' fixtures: the mixed schema's reference, and the demo's as model_api reads it."""

from pathlib import Path

import numpy as np
import pytest

from services.common.reference import ReferenceTable, read_reference
from services.common.schema import FeatureSchema
from services.model_api.drift import (
    Reference,
)
from services.model_api.train import DEFAULT_SEED, MODELS, diabetes_split, train
from tests.unit.model_api.drift.made import DATA, Demo, Homes, homes_schema, predict_homes, table_of


@pytest.fixture(scope="module")
def homes() -> tuple[Reference, ReferenceTable]:
    rows = Homes(np.random.default_rng(100)).rows(5000)
    schema = homes_schema(rows)
    table = table_of(schema, rows, predict_homes(rows), "homes made in the test")
    return Reference.from_table(table), table


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """train's model and reference, read back as model_api reads them; the model fitted again as
    train fits it (its predictions are the reference's: checked)."""
    path: Path = tmp_path_factory.mktemp("demo") / "m.pkl"
    metadata = train(path)
    loaded = read_reference(path, metadata, FeatureSchema.from_json(metadata["schema"]))
    assert not isinstance(loaded, str), loaded
    split = diabetes_split(DEFAULT_SEED)
    model = MODELS["linear"](DEFAULT_SEED).fit(split.x_train, split.y_train)
    np.testing.assert_allclose(model.predict(DATA), loaded.table.prediction, rtol=1e-9)

    def predict(rows: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(rows), dtype=float)

    return Demo(Reference.from_table(loaded.table), predict)
