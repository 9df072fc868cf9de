"""Routing halves to the join's shards: stable (a function of the id alone), fair, and with one
shard exactly the queues and arguments there were before shards."""

import zlib
from collections import Counter

import pytest

from services.common.amqp.topology import (
    DelayQueue,
    delay_queues,
    fence_arguments,
    half_queue,
    half_queues,
    queue_arguments,
    shard_of,
    shard_queue,
)
from services.common.delay import LabelDelay
from services.common.settings import QueueType, Settings

# crc32 of the id's UTF-8 bytes, as zlib (and any CRC-32/ISO-HDLC implementation) computes it,
# taken down once: a change of routing would strand every half already queued.
CRC32 = {
    "1669147134.196809": 3768237537,
    "1669147134.196810": 2153591812,
    "a": 3904355907,
    "order-42": 1475806942,
    "x:y_z.1-2": 59552167,
}


def settings(shards: int = 1, shard: int = 0, **more: str) -> Settings:
    """Settings as the environment gives them: ``more`` as text, which pydantic-settings converts."""
    return Settings.model_validate({"METRIC_SHARDS": shards, "METRIC_SHARD": shard, "QUEUE_PREFIX": "p.", **more})


@pytest.mark.parametrize(("sample_id", "crc"), CRC32.items())
@pytest.mark.parametrize("shards", [2, 3, 7])
def test_an_id_goes_to_the_shard_of_its_crc32_whatever_the_run(sample_id: str, crc: int, shards: int) -> None:
    assert zlib.crc32(sample_id.encode()) == crc
    assert shard_of(sample_id, shards) == crc % shards
    expected = f"p.y_true.shard{crc % shards}of{shards}"
    assert half_queue(settings(shards), "y_true", sample_id) == expected
    assert half_queue(settings(shards), "y_pred", sample_id) == expected.replace("y_true", "y_pred")


def test_both_halves_of_an_id_meet_in_the_same_shard() -> None:
    config = settings(4)
    for n in range(1000):
        sample_id = f"{1_700_000_000 + n * 0.013:.6f}"
        assert half_queue(config, "y_true", sample_id).replace("y_true", "") == half_queue(config, "y_pred", sample_id).replace(
            "y_pred", ""
        )


@pytest.mark.parametrize("shards", [2, 3])
def test_ten_thousand_demo_ids_are_shared_fairly(shards: int) -> None:
    ids = [f"{1_669_147_134 + n * 0.000731:.6f}" for n in range(10_000)]
    counts = Counter(shard_of(sample_id, shards) for sample_id in ids)
    fair = 10_000 / shards
    assert set(counts) == set(range(shards))
    # A fair coin's spread over 10,000 ids is ~50; 5 % off a fair share would be a broken hash.
    assert all(abs(count - fair) < 0.05 * fair for count in counts.values()), counts


def test_one_shard_is_the_queues_and_arguments_there_were_before_shards() -> None:
    config = settings(1)
    assert half_queue(config, "y_true", "a") == "p.y_true"
    assert half_queues(config, "y_pred") == ["p.y_pred"]
    assert shard_queue(config, "y_true", 0) == "p.y_true"
    assert "x-single-active-consumer" not in queue_arguments("p.y_true")
    assert "x-single-active-consumer" not in queue_arguments("p.y_true", "quorum")
    delays = delay_queues(config, "y_true", LabelDelay.parse("9"))
    assert {queue.target for queue in delays} == {"p.y_true"}


def test_shard_queues_carry_the_shard_count_and_take_one_consumer_at_a_time() -> None:
    config = settings(2)
    assert half_queues(config, "y_true") == ["p.y_true.shard0of2", "p.y_true.shard1of2"]
    queue_types: tuple[QueueType, ...] = ("classic", "quorum")
    for queue_type in queue_types:
        arguments = queue_arguments("p.y_true.shard1of2", queue_type)
        assert arguments["x-single-active-consumer"] is True
        assert arguments["x-dead-letter-routing-key"] == "p.y_true.shard1of2.dlq"
    assert "x-single-active-consumer" not in queue_arguments("p.y_true.shard1of2.dlq")


def test_a_delayed_label_waits_in_front_of_its_own_shard() -> None:
    config = settings(2)
    delays = delay_queues(config, "y_true", LabelDelay.parse("9"))
    assert {queue.target for queue in delays} == {"p.y_true.shard0of2", "p.y_true.shard1of2"}
    assert all(queue.name.startswith(queue.target + ".delay.") for queue in delays)
    assert isinstance(delays[0], DelayQueue)


def test_the_fence_differs_from_the_unsharded_queue_and_between_shard_counts() -> None:
    """Declared under the unsharded name, the fence fails (PRECONDITION_FAILED) against the queue of
    a one-shard service, and against the fence of another METRIC_SHARDS, in either order."""
    unsharded = queue_arguments("p.y_true")
    assert fence_arguments(2) != unsharded and fence_arguments(2) != fence_arguments(3)
    assert fence_arguments(2)["x-max-length"] == 0  # it holds nothing
    assert fence_arguments(2, "quorum")["x-queue-type"] == "quorum"


def test_a_shard_outside_the_shards_is_refused() -> None:
    with pytest.raises(ValueError, match="METRIC_SHARDS=2"):
        shard_queue(settings(2), "y_true", 2)
