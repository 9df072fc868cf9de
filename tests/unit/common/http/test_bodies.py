"""schema_rows: features checked against the model's schema on the way in, a 422 naming each that does not fit."""

from services.common.schema import DIABETES
from tests.unit.common.http.tiny_app import post_each, tiny_app

TEN = [0.1] * 10


def test_features_that_fit_are_taken_by_name_or_in_order_as_rows_in_schema_order() -> None:
    app, _ = tiny_app()
    by_name = dict(reversed(list(zip(DIABETES.names, range(10), strict=True))))
    [answer] = post_each(app, [{"json": {"samples": [{"features": TEN}, {"features": by_name}]}}], path="/samples")
    assert answer.status_code == 200 and answer.json() == [TEN, [float(i) for i in range(10)]]


def test_features_that_do_not_fit_are_a_422_naming_each_sample_and_feature() -> None:
    app, _ = tiny_app()
    bad_bmi: list[object] = [*TEN[:2], "tall", *TEN[3:]]
    samples = [{"features": TEN}, {"features": bad_bmi}, {"features": TEN[:9]}]
    [answer] = post_each(app, [{"json": {"samples": samples}}], path="/samples")
    assert answer.status_code == 422, answer.text
    errors = answer.json()["detail"]
    assert errors[0]["loc"][:4] == ["body", "samples", 1, "features"] and "bmi" in errors[0]["msg"]
    assert errors[0]["input"] == "tall"
    assert [error["loc"][2] for error in errors] == [1, 2]


def test_a_422_names_at_most_twenty_bodies_problems() -> None:
    app, _ = tiny_app()
    samples = [{"features": ["x"] * 10} for _ in range(100)]
    [answer] = post_each(app, [{"json": {"samples": samples}}], path="/samples")
    assert answer.status_code == 422 and len(answer.json()["detail"]) == 20
