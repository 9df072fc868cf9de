"""The feature schema every way in validates against: bodies by name or in order, every bad input
refused naming the feature and what was expected, missing values and unseen categories taken, the
encoding drift's window holds, and the sidecar's record of it."""

import math

import numpy as np
import pytest

from services.common.schema import (
    CATEGORY_MAX_CHARS,
    DIABETES,
    DIABETES_NAMES,
    UNSEEN,
    FeatureSchema,
    FeatureSpec,
    SchemaViolation,
    problem_errors,
)
from services.common.settings import get_settings

HOUSE = FeatureSchema(
    (
        FeatureSpec("sqft", "numeric", missing_share=0.0),
        FeatureSpec("city", "categorical", ("Paris", "Lyon", "Lille"), missing_share=0.02),
        FeatureSpec("built_year", "numeric"),
    ),
    target="price",
)


def refusal(body: object, schema: FeatureSchema = HOUSE) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as refused:
        schema.row(body)
    return refused.value


def test_a_body_by_name_or_in_order_gives_the_values_in_schema_order() -> None:
    expected = [1200.0, "Lyon", 1975.0]
    assert HOUSE.row({"built_year": 1975, "city": "Lyon", "sqft": 1200}) == expected
    assert HOUSE.row([1200, "Lyon", 1975.0]) == expected
    assert all(type(v) is float for v in HOUSE.row([1200, "Lyon", 1975])[::2])  # ints as floats


def test_null_is_a_missing_value_of_either_kind_and_an_unseen_category_is_taken() -> None:
    assert HOUSE.row({"sqft": None, "city": None, "built_year": 1990}) == [None, None, 1990.0]
    assert HOUSE.row([900, "Marseille", 2001]) == [900.0, "Marseille", 2001.0]


@pytest.mark.parametrize(
    ("body", "kind", "loc", "says"),
    [
        ({"sqft": 1.0, "city": "Lyon"}, "missing_feature", ("built_year",), "feature 'built_year' is missing"),
        (
            {"sqft": 1.0, "city": "Lyon", "built_year": 1.0, "pool": 1},
            "unknown_feature",
            ("pool",),
            "unknown feature 'pool': the schema's 3 features are sqft, city, built_year",
        ),
        (
            {"sqft": "big", "city": "Lyon", "built_year": 1.0},
            "wrong_type",
            ("sqft",),
            'sqft is numeric: expected a number or null, got the string "big"',
        ),
        (
            {"sqft": 1.0, "city": 75, "built_year": 1.0},
            "wrong_type",
            ("city",),
            "city is categorical: expected a string or null, got the number 75",
        ),
        ({"sqft": True, "city": "Lyon", "built_year": 1.0}, "wrong_type", ("sqft",), "got the boolean true"),
        ({"sqft": [1], "city": "Lyon", "built_year": 1.0}, "wrong_type", ("sqft",), "got a list"),
        ([1.0, "Lyon", math.inf], "non_finite", (2,), "built_year is numeric: expected a finite number or null, got inf"),
        ([1.0, "Lyon", 1e13], "out_of_range", (2,), "built_year is numeric: 1e+13 is beyond ±1e+12 (FEATURE_ABS_MAX)"),
        (
            [1.0, "L" * (CATEGORY_MAX_CHARS + 1), 1.0],
            "out_of_range",
            (1,),
            f"a category is at most {CATEGORY_MAX_CHARS} characters",
        ),
        ([1.0, "Lyon"], "feature_count", (), "a list of features holds 3 values in schema order, not 2"),
        ("1,Lyon,1975", "not_a_body", (), "features must be an object by name or a list in schema order"),
    ],
)
def test_a_body_that_does_not_fit_is_refused_naming_the_feature_and_what_was_expected(
    body: object, kind: str, loc: tuple[object, ...], says: str
) -> None:
    refused = refusal(body)
    assert refused.kind == kind and refused.problems[0].loc == loc
    assert says in str(refused)


def test_every_problem_of_a_body_is_named_up_to_a_few() -> None:
    refused = refusal({"sqft": "x", "city": 1, "built_year": None})
    assert [p.loc for p in refused.problems] == [("sqft",), ("city",)]
    wide = FeatureSchema.numeric([f"x{i}" for i in range(50)])
    assert len(refusal(["no"] * 50, wide).problems) == 5


def test_the_422_errors_locate_each_problem_in_the_request_with_the_value_sent() -> None:
    body = {"sqft": "big", "city": 3, "built_year": 1.0}
    errors = problem_errors(refusal(body), ("body", "instances", 4), body)
    assert [(e["loc"], e["input"], e["type"]) for e in errors] == [
        (("body", "instances", 4, "sqft"), "big", "feature_wrong_type"),
        (("body", "instances", 4, "city"), 3, "feature_wrong_type"),
    ]


def test_the_bound_is_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURE_ABS_MAX", "100")
    get_settings.cache_clear()
    try:
        assert refusal([101.0, "Lyon", 1.0]).kind == "out_of_range"
        assert DIABETES.row([0.5] * 10) == [0.5] * 10
        assert refusal([0.5] * 9 + [101.0], DIABETES).problems[0].loc == (9,)
    finally:
        get_settings.cache_clear()


def test_the_encoding_is_numbers_category_positions_unseen_and_nan() -> None:
    rows = [HOUSE.row([1.0, "Lille", 2.0]), HOUSE.row([None, "Nice", 3.0]), HOUSE.row([4.0, None, None])]
    matrix = HOUSE.encode(rows)
    expected = np.array([[1.0, 2.0, 2.0], [math.nan, UNSEEN, 3.0], [4.0, math.nan, math.nan]])
    np.testing.assert_array_equal(matrix, expected)
    np.testing.assert_array_equal(HOUSE.encode_columns(list(zip(*rows, strict=True))), expected)
    assert DIABETES.encode([]).shape == (0, 10)


def test_the_record_round_trips_and_the_fingerprint_follows_names_and_kinds_only() -> None:
    again = FeatureSchema.from_json(HOUSE.to_json())
    assert again == HOUSE and again.target == "price" and again.features[1].missing_share == 0.02
    more_categories = FeatureSchema((HOUSE.features[0], FeatureSpec("city", "categorical", ("Nice",)), HOUSE.features[2]))
    assert more_categories.fingerprint == HOUSE.fingerprint  # a new category is a value, not a new schema
    reordered = FeatureSchema((HOUSE.features[1], HOUSE.features[0], HOUSE.features[2]))
    assert reordered.fingerprint != HOUSE.fingerprint
    assert DIABETES.names == DIABETES_NAMES and DIABETES.numeric_only


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ({"format": 1, "features": [{"name": "a", "kind": "text"}]}, "numeric or categorical, not 'text'"),
        ({"format": 1, "features": [{"name": "a", "kind": "numeric"}, {"name": "a", "kind": "numeric"}]}, "repeated: a"),
        ({"format": 1, "features": []}, "1 to 2000 features"),
        ({"format": 9, "features": []}, "not a feature schema of format 1"),
        ({"format": 1, "features": [{"name": "", "kind": "numeric"}]}, "1 to 100 characters"),
    ],
)
def test_an_unusable_record_is_refused_saying_why(record: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        FeatureSchema.from_json(record)


def test_an_unknown_name_lists_the_schemas_features() -> None:
    with pytest.raises(KeyError, match="unknown feature 'pool': the schema's 3 features are sqft, city, built_year"):
        HOUSE.position("pool")
    wide = FeatureSchema.numeric([f"x{i}" for i in range(200)])
    assert wide.listing().endswith("x19 and 180 more")
