"""The reference table beside a model: a plain Parquet file round-tripped exactly (missing values and
categories included), vouched for by its sha256 in the sidecar; anything else is "unavailable"
with the reason, never a crash. And the sidecar as features_api reads it."""

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from services.common.files import metadata_path
from services.common.reference import BadReference, ReferenceTable, read_reference, reference_path, write_reference
from services.common.registration import RegistrationError, read_registration
from services.common.schema import DIABETES, FeatureSchema, FeatureSpec

SCHEMA = FeatureSchema((FeatureSpec("sqft", "numeric"), FeatureSpec("city", "categorical", ("Paris", "Lyon"))))


def table(rows: int = 5) -> ReferenceTable:
    sqft = np.array([1000.0, math.nan, 1200.5, 900.0, 1500.0][:rows])
    city = np.array(["Paris", "Lyon", None, "Nice", "Paris"][:rows], dtype=object)
    return ReferenceTable(
        SCHEMA, (sqft, city), np.arange(rows, dtype=float) * 10, np.array([1.0, 2.0, math.nan, 4.0, 5.0][:rows]), "test rows"
    )


def vouched(tmp_path: Path, reference: ReferenceTable) -> tuple[Path, dict[str, Any]]:
    model = tmp_path / "m.pkl"
    metadata = {"schema": reference.schema.to_json(), "reference": write_reference(model, reference)}
    metadata_path(model).write_text(json.dumps(metadata))
    return model, metadata


def test_the_table_round_trips_through_its_file_exactly(tmp_path: Path) -> None:
    original = table()
    model, metadata = vouched(tmp_path, original)
    loaded = read_reference(model, metadata, SCHEMA)
    assert not isinstance(loaded, str), loaded
    again = loaded.table
    np.testing.assert_array_equal(again.columns[0], original.columns[0])
    assert again.columns[1].tolist() == ["Paris", "Lyon", None, "Nice", "Paris"]
    np.testing.assert_array_equal(again.target, original.target)
    np.testing.assert_array_equal(again.prediction, original.prediction)
    assert again.source == "test rows" and again.rows == 5
    assert again.row(1) == [None, "Lyon"] and again.row(2) == [1200.5, None]
    assert loaded.sha256 == hashlib.sha256(reference_path(model).read_bytes()).hexdigest() == metadata["reference"]["sha256"]


def test_the_file_is_a_plain_parquet_table(tmp_path: Path) -> None:
    model, _ = vouched(tmp_path, table())
    frame = pd.read_parquet(reference_path(model))
    assert list(frame.columns) == ["sqft", "city", "__target__", "__prediction__"]
    assert frame["city"].isna().sum() == 1 and frame["sqft"].isna().sum() == 1


def test_the_encoded_matrix_is_what_the_schema_encodes_row_by_row() -> None:
    reference = table()
    expected = SCHEMA.encode([reference.row(i) for i in range(reference.rows)])
    np.testing.assert_array_equal(reference.encoded(), expected)


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda path, _meta: path.write_bytes(path.read_bytes() + b"x"), "changed after it was written"),
        (lambda path, _meta: path.unlink(), "cannot read the reference"),
        (lambda _path, meta: meta.pop("reference"), "names no reference"),
        (lambda _path, meta: meta.update(reference={"file": "../x", "sha256": "0"}), "no usable"),
        (lambda _path, meta: meta.update(reference={**meta["reference"], "file": "m.pkl.reference.json"}), "older version"),
    ],
)
def test_a_reference_that_cannot_be_used_is_unavailable_saying_why(tmp_path: Path, spoil: object, says: str) -> None:
    model, metadata = vouched(tmp_path, table())
    spoil(reference_path(model), metadata)  # type: ignore[operator]  # one of the lambdas above
    loaded = read_reference(model, metadata, SCHEMA)
    assert isinstance(loaded, str) and says in loaded


def test_a_reference_for_another_schema_is_unavailable_naming_its_columns(tmp_path: Path) -> None:
    model, metadata = vouched(tmp_path, table())
    loaded = read_reference(model, metadata, DIABETES)
    assert isinstance(loaded, str) and "columns are not the schema's features" in loaded and "sqft, city" in loaded


def test_a_table_without_enough_rows_or_with_a_missing_target_is_refused() -> None:
    with pytest.raises(BadReference, match="at least 2 rows"):
        table(rows=1)
    broken = table()
    with pytest.raises(BadReference, match="targets must all be finite"):
        ReferenceTable(SCHEMA, broken.columns, np.array([1.0, math.nan, 1.0, 1.0, 1.0]), broken.prediction, "x")


def test_the_registration_is_the_sidecars_schema_or_the_demos_for_an_old_sidecar(tmp_path: Path) -> None:
    model, _ = vouched(tmp_path, table())
    assert read_registration(model).schema == SCHEMA
    metadata_path(model).write_text(json.dumps({"sha256": "ab" * 32}))  # written before schemas existed
    assert read_registration(model).schema == DIABETES
    metadata_path(model).write_text("{not json")
    with pytest.raises(RegistrationError, match="cannot read model metadata"):
        read_registration(model)
    metadata_path(model).unlink()
    with pytest.raises(RegistrationError, match=r"python -m services\.model_api\.register"):
        read_registration(model)
