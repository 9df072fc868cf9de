"""Queue arguments: classic by default, quorum with at-least-once dead-lettering when asked."""

from services.common.amqp.topology import DELIVERY_LIMIT, DelayQueue, delay_queue_arguments, dlq_name, queue_arguments


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


def test_a_delay_queue_is_of_the_queue_type_and_dead_letters_its_expired_labels_into_its_target() -> None:
    queue = DelayQueue("p.y_true.delay.8000ms", "p.y_true")
    assert delay_queue_arguments(queue) == {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "p.y_true"}
    quorum = delay_queue_arguments(queue, "quorum")
    assert quorum["x-queue-type"] == "quorum" and quorum["x-dead-letter-routing-key"] == "p.y_true"
    # An expired label must reach y_true even through a failover: at-least-once dead-lettering.
    assert (quorum["x-dead-letter-strategy"], quorum["x-overflow"]) == ("at-least-once", "reject-publish")
    assert "x-delivery-limit" not in quorum  # nobody consumes a delay queue
