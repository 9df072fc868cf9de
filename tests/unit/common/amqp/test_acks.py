"""AckPlanner: a batch's acks folded into one multiple ack per channel, only where that covers exactly the batch."""

from services.common.amqp.acks import AckPlanner, Settlement


def planner_with(*received: tuple[str, int]) -> AckPlanner[str]:
    planner: AckPlanner[str] = AckPlanner()
    for channel, tag in received:
        planner.received(channel, tag)
    return planner


def test_a_batch_holding_every_unsettled_delivery_up_to_its_last_is_one_multiple_ack() -> None:
    planner = planner_with(*(("a", tag) for tag in range(1, 6)))
    assert planner.plan([("a", 1), ("a", 2), ("a", 3)]) == [Settlement("a", 3, multiple=True)]
    assert planner.plan([("a", 4), ("a", 5)]) == [Settlement("a", 5, multiple=True)]


def test_a_delivery_left_out_below_the_batch_gets_each_acked_on_its_own() -> None:
    planner = planner_with(("a", 1), ("a", 2), ("a", 3), ("a", 4))  # 2 is being dead-lettered
    assert planner.plan([("a", 1), ("a", 3), ("a", 4)]) == [Settlement("a", 1), Settlement("a", 3), Settlement("a", 4)]
    assert planner.plan([("a", 2)]) == [Settlement("a", 2)]


def test_deliveries_above_the_batch_do_not_stop_a_multiple_ack() -> None:
    planner = planner_with(("a", 1), ("a", 2), ("a", 3))
    assert planner.plan([("a", 1), ("a", 2)]) == [Settlement("a", 2, multiple=True)]


def test_each_channel_gets_its_own_ack() -> None:
    planner = planner_with(("a", 7), ("a", 8), ("b", 1), ("b", 2))
    assert planner.plan([("a", 7), ("b", 1), ("a", 8), ("b", 2)]) == [
        Settlement("a", 8, multiple=True),
        Settlement("b", 2, multiple=True),
    ]


def test_nacks_are_one_frame_each_and_say_whether_to_requeue() -> None:
    planner = planner_with(("a", 1), ("a", 2))
    assert planner.plan([("a", 1), ("a", 2)], requeue=True) == [
        Settlement("a", 1, requeue=True),
        Settlement("a", 2, requeue=True),
    ]


def test_a_single_delivery_is_a_plain_ack() -> None:
    assert planner_with(("a", 1)).plan([("a", 1)]) == [Settlement("a", 1)]


def test_a_forgotten_channel_holds_nothing_back() -> None:
    planner = planner_with(("old", 1), ("old", 2), ("new", 1), ("new", 2))
    planner.forget("old")
    assert planner.channels == ["new"]
    assert planner.plan([("new", 1), ("new", 2)]) == [Settlement("new", 2, multiple=True)]
