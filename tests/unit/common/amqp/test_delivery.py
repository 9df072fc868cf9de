"""A delivery validated or refused, and its copy for the DLQ."""

from types import SimpleNamespace
from typing import Any

from services.common.amqp.delivery import Delivery, Refusal, dead_letter_copy, validate
from services.common.messages import MAX_MESSAGE_BYTES, SCHEMA_CONTEXT, FeaturesMessage, LabelMessage
from services.common.schema import DIABETES

SCHEMA = {SCHEMA_CONTEXT: DIABETES}


def raw(body: bytes, message_id: str | None) -> Any:
    return SimpleNamespace(body=body, header=SimpleNamespace(properties=SimpleNamespace(message_id=message_id)))


def test_a_valid_body_is_its_message() -> None:
    body = FeaturesMessage(id="1700000000.000001", body=[0.0] * 10).to_bytes()
    message = validate(body, FeaturesMessage, lambda: SCHEMA)
    assert isinstance(message, FeaturesMessage) and message.id == "1700000000.000001"


def test_a_refusal_names_the_field_and_keeps_the_error() -> None:
    refusal = validate(b'{"id": "1.5", "body": [1, 2]}', FeaturesMessage, lambda: SCHEMA)
    assert isinstance(refusal, Refusal) and refusal.error is not None
    assert refusal.reason.startswith("body") and "10" in refusal.reason


def test_a_body_too_large_is_refused_unread() -> None:
    refusal = validate(b"{" + b" " * MAX_MESSAGE_BYTES + b"}", LabelMessage)
    assert refusal == Refusal(f"message of {MAX_MESSAGE_BYTES + 2} bytes exceeds {MAX_MESSAGE_BYTES}")


def test_a_dead_letter_copy_carries_the_body_the_reason_and_the_sample_id() -> None:
    message = LabelMessage(id="order-17", body=1.0)
    copy = dead_letter_copy(Delivery(message, raw(b"as it came", "order-17/3"), "t.y_true", 0.0), "refused: x" * 200)
    assert (copy.queue, copy.body, copy.sample_id) == ("t.y_true.dlq", b"as it came", "order-17")
    assert copy.headers is not None and copy.headers["x-original-queue"] == "t.y_true"
    assert len(copy.headers["x-dlq-reason"]) == 1000
    assert copy.message_id != "order-17/3"  # a message of its own


def test_the_copy_of_a_message_that_did_not_parse_goes_under_the_message_id_it_came_with() -> None:
    assert dead_letter_copy(Delivery(None, raw(b"not json", "theirs-1"), "t.predictions", 0.0), "x").sample_id == "theirs-1"
    assert dead_letter_copy(Delivery(None, raw(b"not json", None), "t.predictions", 0.0), "x").sample_id == ""
