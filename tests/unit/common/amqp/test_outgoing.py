"""Outgoing: every message its own AMQP message_id, still saying which sample it carries."""

from services.common.amqp.outgoing import Outgoing


def test_the_halves_of_one_sample_each_get_their_own_message_id_under_its_sample_id() -> None:
    features = Outgoing("features", b"{}", "1700000000.000001")
    label = Outgoing("y_true", b"{}", "1700000000.000001")
    again = Outgoing("features", b"{}", "1700000000.000001")  # the same sample sent twice (a caller's duplicate)
    ids = [features.message_id, label.message_id, again.message_id]
    assert len(set(ids)) == 3
    assert all(message_id.startswith("1700000000.000001/") for message_id in ids)
    assert features.properties().message_id == features.message_id


def test_a_message_keeps_its_id_however_often_it_is_sent() -> None:
    message = Outgoing("y_pred", b"{}", "order-17")
    assert message.properties().message_id == message.properties().message_id == message.message_id


def test_an_id_too_long_for_a_short_string_is_cut_to_fit_without_splitting_a_character() -> None:
    copied = Outgoing("predictions.dlq", b"x", "é" * 200)  # a dead letter of a message whose own id was that
    encoded = copied.message_id.encode()
    assert len(encoded) <= 255
    head, _, number = copied.message_id.rpartition("/")
    assert set(head) == {"é"} and len(head) >= 120 and number.isdigit()
