"""A prediction's tags: the limits on every way in, the refusal naming the tag, SEGMENT_KEYS."""

import pytest
from pydantic import ValidationError

from services.common.messages import FeaturesMessage, PredictionMessage, ReportedPrediction
from services.common.settings import Settings
from services.common.tags import numeric_segment_keys, parse_segment_keys, segment_feature_positions, segment_tags


@pytest.mark.parametrize(
    ("tags", "said"),
    [
        ({f"k{i}": "v" for i in range(9)}, "9 tags given, at most 8 are taken"),
        ({"region": 3}, "the tag 'region' is int, not a string"),
        ({"region": ""}, "the tag 'region' is 0 characters long"),
        ({"region": "x" * 129}, "the tag 'region' is 129 characters long"),
        ({"region": "EU\n"}, "the tag 'region' contains a control character"),
        ({"9region": "EU"}, "the tag key '9region' is not 1 to 64 characters"),
        ({"k" * 65: "EU"}, "is not 1 to 64 characters"),
        (["region"], "tags are an object of string values, not list"),
    ],
)
def test_tags_beyond_the_limits_are_refused_naming_the_tag(tags: object, said: str) -> None:
    for model, fields in ((FeaturesMessage, {"body": [1.0]}), (ReportedPrediction, {"body": 1.0})):
        with pytest.raises(ValidationError, match="tags") as refused:
            model.model_validate({"id": "1.5", **fields, "tags": tags})
        assert said in str(refused.value)


def test_tags_within_the_limits_are_taken_and_absent_ones_leave_the_message_as_it_was() -> None:
    tags = {f"k{i}": "v" * 128 for i in range(8)} | {"_a.b-c": "EU"}
    tags.pop("k0")
    assert FeaturesMessage.model_validate({"id": "1.5", "body": [1.0], "tags": tags}).tags == tags
    assert PredictionMessage(id="1.5", body=1.0).to_bytes() == b'{"id":"1.5","body":1.0,"model_version":"unknown"}'
    assert b'"tags":{"region":"EU"}' in PredictionMessage(id="1.5", body=1.0, tags={"region": "EU"}).to_bytes()


def test_segment_keys_are_tag_keys_each_once() -> None:
    assert parse_segment_keys(" region, city ,region,") == ("region", "city")
    assert Settings(SEGMENT_KEYS="region,city").segment_keys == ("region", "city")
    with pytest.raises(ValidationError, match="SEGMENT_KEYS: the tag key '9x'"):
        Settings(SEGMENT_KEYS="region,9x")


def test_a_segment_features_value_joins_the_tags_and_a_callers_tag_of_that_name_wins() -> None:
    positions = segment_feature_positions(("region", "city", "sqft"), ("sqft", "city", "channel"), (1, 2))
    assert positions == {"city": 1}  # sqft is numeric: not a segment feature
    assert segment_tags({"region": "EU"}, [120.0, "Lyon", "web"], positions) == {"region": "EU", "city": "Lyon"}
    assert segment_tags({"city": "mine"}, [120.0, "Lyon", "web"], positions) == {"city": "mine"}
    assert segment_tags(None, [120.0, None, "web"], positions) is None
    assert segment_tags(None, None, positions) is None


def test_a_numeric_feature_named_as_a_segment_key_is_warned_of_by_name() -> None:
    names, categorical = ("area", "district", "rooms"), (1,)
    warning = numeric_segment_keys(("district", "area", "region", "rooms"), names, categorical)
    assert warning is not None and "'area', 'rooms'" in warning and "district" not in warning
    assert numeric_segment_keys(("district", "region"), names, categorical) is None  # a categorical, and a tag
