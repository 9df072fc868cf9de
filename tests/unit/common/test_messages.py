import json

import pytest
from pydantic import ValidationError

from services.common.amqp.delivery import describe_validation_error
from services.common.messages import (
    ID_RULE,
    SCHEMA_CONTEXT,
    FeaturesMessage,
    LabelMessage,
    PredictionMessage,
    SampleIdClock,
    SampleMessage,
)
from services.common.schema import DIABETES
from services.common.settings import get_settings

SEED_ID = "1669147134.196809"
TEN_FEATURES = [0.038, 0.05, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]


def raw(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def features_of(data: bytes) -> FeaturesMessage:
    """A features message as model_api reads it: checked against the schema of the model in service (the demo's)."""
    return FeaturesMessage.model_validate_json(data, context={SCHEMA_CONTEXT: DIABETES})


def refused_fields(exc: pytest.ExceptionInfo[ValidationError]) -> set[object]:
    """The top-level fields the validation errors are about."""
    return {error["loc"][0] for error in exc.value.errors() if error["loc"]}


# --- the three kinds, as the CONTRACT shows them ---------------------------------------


def test_features_message_parses() -> None:
    message = features_of(raw(id=SEED_ID, body=TEN_FEATURES, ts=1669147134.196809))
    assert message.id == SEED_ID
    assert message.body == TEN_FEATURES
    assert message.ts == 1669147134.196809


def test_label_message_parses() -> None:
    message = LabelMessage.model_validate_json(raw(id=SEED_ID, body=151.0, ts=1669147134.196809))
    assert (message.id, message.body, message.ts) == (SEED_ID, 151.0, 1669147134.196809)


def test_prediction_message_parses_with_model_version() -> None:
    message = PredictionMessage.model_validate_json(raw(id=SEED_ID, body=150.37, ts=1.5, model_version="abc123"))
    assert (message.id, message.body, message.model_version) == (SEED_ID, 150.37, "abc123")


def test_integer_numbers_are_accepted_as_floats() -> None:
    label = LabelMessage.model_validate_json(raw(id=SEED_ID, body=151))
    features = features_of(raw(id=SEED_ID, body=list(range(10))))
    assert label.body == 151.0 and type(label.body) is float
    assert features.body == [float(i) for i in range(10)]
    assert all(type(v) is float for v in features.body)


def test_ts_is_optional() -> None:
    assert LabelMessage.model_validate_json(raw(id=SEED_ID, body=1.0)).ts is None


# --- ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numeric_id", "expected"),
    [
        (b"1669147134.196809", "1669147134.196809"),  # float from an old producer
        (b"1669147134", "1669147134.000000"),  # int
        (b"1669147134.5", "1669147134.500000"),
        (b"0.000001", "0.000001"),
        (b"0", "0.000000"),
    ],
)
def test_numeric_id_is_normalised_to_seconds_dot_microseconds(numeric_id: bytes, expected: str) -> None:
    message = LabelMessage.model_validate_json(b'{"id":' + numeric_id + b',"body":1.0}')
    assert message.id == expected


def test_numeric_id_from_python_objects_is_normalised() -> None:
    assert LabelMessage(id=1669147134.196809, body=1.0).id == "1669147134.196809"
    assert LabelMessage(id=1669147134, body=1.0).id == "1669147134.000000"


@pytest.mark.parametrize(
    "bad_id",
    ["1669147134,196809", "1669147134.196809\n", "1669\n147134", "", " 1.0", "1.0\r", "x" * 65],
    ids=["comma", "trailing-newline", "inner-newline", "empty", "space", "carriage-return", "too-long"],
)
def test_ids_that_would_break_the_csv_are_refused(bad_id: str) -> None:
    with pytest.raises(ValidationError) as exc:
        LabelMessage.model_validate_json(raw(id=bad_id, body=1.0))
    assert refused_fields(exc) == {"id"}


@pytest.mark.parametrize("bad_id", [b"-1", b"-0.5", b"true", b"null", b"[1]", b"1e300"])
def test_non_timestamp_ids_are_refused(bad_id: bytes) -> None:
    with pytest.raises(ValidationError) as exc:
        LabelMessage.model_validate_json(b'{"id":' + bad_id + b',"body":1.0}')
    assert refused_fields(exc) == {"id"}


def test_missing_id_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        LabelMessage.model_validate_json(raw(body=1.0))
    assert refused_fields(exc) == {"id"}


# --- bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'"151.0"', b"true", b"false", b"[151.0]", b"null", b'{"v":1}'],
    ids=["string", "true", "false", "list", "null", "object"],
)
@pytest.mark.parametrize("kind", [LabelMessage, PredictionMessage])
def test_label_or_prediction_body_of_the_wrong_type_is_refused(kind: type[SampleMessage], body: bytes) -> None:
    with pytest.raises(ValidationError) as exc:
        kind.model_validate_json(b'{"id":"1.0","body":' + body + b"}")
    assert refused_fields(exc) == {"body"}


@pytest.mark.parametrize("count", [0, 9, 11])
def test_features_of_the_wrong_length_are_refused(count: int) -> None:
    with pytest.raises(ValidationError) as exc:
        features_of(raw(id=SEED_ID, body=[0.5] * count))
    assert refused_fields(exc) == {"body"}


def test_a_null_feature_is_taken_as_missing() -> None:
    body = [*TEN_FEATURES[:9], None]
    assert features_of(raw(id=SEED_ID, body=body)).body == body


def test_features_by_name_come_out_in_schema_order() -> None:
    by_name = dict(reversed(list(zip(DIABETES.names, TEN_FEATURES, strict=True))))
    assert features_of(raw(id=SEED_ID, body=by_name)).body == TEN_FEATURES


def test_a_list_published_for_another_schema_is_refused_saying_both() -> None:
    with pytest.raises(ValidationError, match=f"schema abcdef123456, and the model in service has schema {DIABETES.fingerprint}"):
        features_of(raw(id=SEED_ID, body=TEN_FEATURES, schema_id="abcdef123456"))
    assert features_of(raw(id=SEED_ID, body=TEN_FEATURES, schema_id=DIABETES.fingerprint)).body == TEN_FEATURES


@pytest.mark.parametrize("element", [b'"0.5"', b"true", b"[0.5]", b"{}"])
def test_features_with_a_non_number_element_are_refused(element: bytes) -> None:
    body = b"[" + b"0.5," * 9 + element + b"]"
    with pytest.raises(ValidationError) as exc:
        features_of(b'{"id":"1.0","body":' + body + b"}")
    assert refused_fields(exc) == {"body"}


def test_features_body_that_is_not_a_list_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        features_of(raw(id=SEED_ID, body=151.0))
    assert refused_fields(exc) == {"body"}


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_label_is_refused(number: bytes) -> None:
    with pytest.raises(ValidationError) as exc:
        LabelMessage.model_validate_json(b'{"id":"1.0","body":' + number + b"}")
    assert refused_fields(exc) == {"body"}


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_prediction_is_refused(number: bytes) -> None:
    with pytest.raises(ValidationError) as exc:
        PredictionMessage.model_validate_json(b'{"id":"1.0","body":' + number + b"}")
    assert refused_fields(exc) == {"body"}


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_feature_is_refused(number: bytes) -> None:
    body = b"[" + b"0.5," * 9 + number + b"]"
    with pytest.raises(ValidationError) as exc:
        features_of(b'{"id":"1.0","body":' + body + b"}")
    assert refused_fields(exc) == {"body"}


@pytest.mark.parametrize("number", [b"NaN", b"Infinity"])
def test_non_finite_ts_is_refused(number: bytes) -> None:
    with pytest.raises(ValidationError) as exc:
        LabelMessage.model_validate_json(b'{"id":"1.0","body":1.0,"ts":' + number + b"}")
    assert refused_fields(exc) == {"ts"}


def test_non_finite_python_floats_are_refused_too() -> None:
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValidationError):
            LabelMessage(id="1.0", body=value)


def test_missing_body_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        LabelMessage.model_validate_json(raw(id=SEED_ID))
    assert refused_fields(exc) == {"body"}


# --- the message as a whole -----------------------------------------------------------


@pytest.mark.parametrize("document", [b"[1, 2]", b'"a string"', b"151.0", b"null", b"true"])
@pytest.mark.parametrize("kind", [FeaturesMessage, LabelMessage, PredictionMessage])
def test_json_that_is_not_an_object_is_refused(kind: type[SampleMessage], document: bytes) -> None:
    with pytest.raises(ValidationError):
        kind.model_validate_json(document)


@pytest.mark.parametrize("document", [b"{", b"", b'{"id": "1.0", "body": 1.0,}', b"\xff\xfe", b"{'id': '1.0'}"])
@pytest.mark.parametrize("kind", [FeaturesMessage, LabelMessage, PredictionMessage])
def test_invalid_json_is_refused(kind: type[SampleMessage], document: bytes) -> None:
    with pytest.raises(ValidationError):
        kind.model_validate_json(document)


def test_unknown_extra_fields_are_accepted_and_ignored() -> None:
    message = LabelMessage.model_validate_json(
        raw(id=SEED_ID, body=151.0, producer="v2", trace={"span": 7}, model_version="ignored-on-labels")
    )
    assert (message.id, message.body) == (SEED_ID, 151.0)
    assert b"producer" not in message.to_bytes()


# --- to_bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        FeaturesMessage(id=SEED_ID, body=TEN_FEATURES, ts=1669147134.196809),
        LabelMessage(id=SEED_ID, body=151.0, ts=1669147134.196809),
        PredictionMessage(id=SEED_ID, body=150.37, ts=1669147134.196809, model_version="abc123"),
        LabelMessage(id=SEED_ID, body=0.1 + 0.2),  # a float whose shortest text is long
    ],
    ids=["features", "label", "prediction", "no-ts"],
)
def test_to_bytes_round_trips(message: FeaturesMessage | LabelMessage | PredictionMessage) -> None:
    data = message.to_bytes()
    assert isinstance(data, bytes)
    assert type(message).model_validate_json(data) == message
    decoded = json.loads(data)
    assert decoded["id"] == SEED_ID and decoded["body"] == message.body


def test_to_bytes_leaves_out_a_missing_ts() -> None:
    assert "ts" not in json.loads(LabelMessage(id=SEED_ID, body=1.0).to_bytes())


def test_to_bytes_is_utf8_json_matching_the_contract_shape() -> None:
    data = PredictionMessage(id=SEED_ID, body=150.37, ts=1669147134.196809, model_version="v1").to_bytes()
    assert json.loads(data.decode("utf-8")) == {
        "id": SEED_ID,
        "body": 150.37,
        "ts": 1669147134.196809,
        "model_version": "v1",
    }


# --- absurd but finite numbers: refused with the bound they break --------------------------


@pytest.mark.parametrize(
    ("kind", "body", "bound"),
    [
        (FeaturesMessage, [1e300] * 10, "FEATURE_ABS_MAX"),
        (FeaturesMessage, [*TEN_FEATURES[:9], -1e13], "FEATURE_ABS_MAX"),
        (LabelMessage, 1.7e308, "TARGET_ABS_MAX"),
        (PredictionMessage, -1.7e308, "TARGET_ABS_MAX"),
        (LabelMessage, 1e13, "TARGET_ABS_MAX"),
    ],
)
def test_absurd_finite_numbers_are_refused_naming_the_setting(kind: type[SampleMessage], body: object, bound: str) -> None:
    with pytest.raises(ValidationError) as refused:
        kind.model_validate_json(raw(id=SEED_ID, body=body), context={SCHEMA_CONTEXT: DIABETES})
    assert refused_fields(refused) == {"body"} and bound in str(refused.value)


@pytest.mark.parametrize("ts", [-1.0, 1e300, 4e10])
def test_a_ts_that_is_no_epoch_time_is_refused(ts: float) -> None:
    with pytest.raises(ValidationError) as refused:
        LabelMessage.model_validate_json(raw(id=SEED_ID, body=151.0, ts=ts))
    assert refused_fields(refused) == {"ts"}


def test_the_bounds_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model of another scale: its users raise TARGET_ABS_MAX (or lower it, as here)."""
    assert LabelMessage.model_validate_json(raw(id=SEED_ID, body=5000.0)).body == 5000.0
    monkeypatch.setenv("TARGET_ABS_MAX", "1000")
    monkeypatch.setenv("FEATURE_ABS_MAX", "1")
    get_settings.cache_clear()
    try:
        with pytest.raises(ValidationError, match="beyond ±1000"):
            LabelMessage.model_validate_json(raw(id=SEED_ID, body=5000.0))
        with pytest.raises(ValidationError, match="beyond ±1 "):
            features_of(raw(id=SEED_ID, body=[*TEN_FEATURES[:9], 2.0]))
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("bad_id", "says"),
    [("has space", "' '"), ("a,b", "','"), ("x" * 65, "65 characters long"), ("", "empty")],
)
def test_a_refused_id_says_why_and_states_the_rule_in_the_dead_letter_reason(bad_id: str, says: str) -> None:
    with pytest.raises(ValidationError) as exc:
        LabelMessage.model_validate_json(raw(id=bad_id, body=1.0))
    reason = describe_validation_error(exc.value)  # what x-dlq-reason carries
    assert reason.startswith("id: ") and says in reason and ID_RULE in reason


def test_the_id_rule_names_its_characters_and_length() -> None:
    assert "1 to 64 characters" in ID_RULE and all(c in ID_RULE for c in [".", "_", ":", "-"])


def test_an_id_clock_with_a_suffix_never_gives_an_id_of_one_without() -> None:
    plain, suffixed = SampleIdClock(now=lambda: 1669147134.196809), SampleIdClock(now=lambda: 1669147134.196809, suffix="042")
    plain_ids = {plain.next()[0] for _ in range(100)}
    suffixed_ids = [suffixed.next()[0] for _ in range(100)]
    assert suffixed_ids[0] == "1669147134.196809042" and not plain_ids & set(suffixed_ids)
    with pytest.raises(ValueError, match="digits"):
        SampleIdClock(suffix="a1")


@pytest.mark.parametrize("good_id", ["x" * 64, "a", "order-17:line_2.v3", "0"], ids=["64-chars", "one", "every-kind", "zero"])
def test_ids_within_the_rule_are_taken_as_they_are(good_id: str) -> None:
    assert LabelMessage.model_validate_json(raw(id=good_id, body=1.0)).id == good_id
