"""Queue arguments: classic by default, quorum with at-least-once dead-lettering when asked."""

from services.common.amqp.topology import DELIVERY_LIMIT, dlq_name, queue_arguments


def test_a_classic_queue_dead_letters_to_its_dlq_and_its_dlq_nowhere() -> None:
    assert queue_arguments("p.features") == {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "p.features.dlq"}
    assert queue_arguments(dlq_name("p.features")) == {}


def test_a_quorum_queue_dead_letters_at_least_once() -> None:
    arguments = queue_arguments("p.y_true", "quorum")
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-dead-letter-routing-key"] == "p.y_true.dlq"
    # RabbitMQ's quorum dead-lettering is at-most-once unless both of these are set.
    assert arguments["x-dead-letter-strategy"] == "at-least-once"
    assert arguments["x-overflow"] == "reject-publish"
    # Deliveries cut by closed connections count: keep the limit well above a few failovers.
    assert arguments["x-delivery-limit"] == DELIVERY_LIMIT and 10 <= DELIVERY_LIMIT <= 20


def test_a_quorum_dlq_is_a_quorum_queue_that_dead_letters_nowhere() -> None:
    assert queue_arguments("p.y_pred.dlq", "quorum") == {"x-queue-type": "quorum"}
