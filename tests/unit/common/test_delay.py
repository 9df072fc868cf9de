"""LABEL_DELAY_S: the specs it takes (and the errors for those it does not), the delays drawn, and
the delay-queue buckets: a label is never early and late by less than its bucket's width."""

import random

import pytest
from pydantic import ValidationError

from services.common.delay import (
    BUCKET_RATIO,
    EXP_CAP,
    SMALLEST_BUCKET_S,
    DelayKind,
    DelaySpecError,
    LabelDelay,
    bucket_of,
    bucket_start_s,
    expiration_ms,
)
from services.common.settings import Settings


@pytest.mark.parametrize(
    ("spec", "kind", "low", "high"),
    [
        ("0", "fixed", 0.0, 0.0),
        ("8", "fixed", 8.0, 8.0),
        (" 2.5 ", "fixed", 2.5, 2.5),
        ("exp:30", "exp", 30.0, 30.0 * EXP_CAP),
        ("EXP:0.5", "exp", 0.5, 0.5 * EXP_CAP),
        ("uniform:5:60", "uniform", 5.0, 60.0),
        ("uniform:3:3", "uniform", 3.0, 3.0),
    ],
)
def test_specs_that_are_delays(spec: str, kind: DelayKind, low: float, high: float) -> None:
    assert LabelDelay.parse(spec) == LabelDelay(kind, low, high)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("abc", "'abc' is not a number of seconds"),
        ("-1", "between 0 and"),
        ("nan", "between 0 and"),
        ("5e9", "RabbitMQ's longest expiration"),
        ("exp:", "the mean '' is not a number"),
        ("exp:0", "the mean must be above 0"),
        ("exp:1:2", "'exp' is not a delay"),
        ("uniform:6:5", "HIGH (5) is below LOW (6)"),
        ("uniform:5", "'uniform' is not a delay"),
        ("normal:5:1", "'normal' is not a delay"),
    ],
)
def test_a_bad_spec_says_what_is_wrong_and_what_is_expected(spec: str, says: str) -> None:
    with pytest.raises(DelaySpecError) as exc:
        LabelDelay.parse(spec)
    assert says in str(exc.value) and f"LABEL_DELAY_S={spec!r}" in str(exc.value) and "exp:MEAN" in str(exc.value)


def test_settings_refuse_a_bad_label_delay_naming_the_variable() -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(LABEL_DELAY_S="exp:soon")
    assert "LABEL_DELAY_S" in str(exc.value) and "'soon' is not a number of seconds" in str(exc.value)
    assert Settings(LABEL_DELAY_S="exp:30").label_delay() == LabelDelay("exp", 30.0, 600.0)
    assert Settings().label_delay().off


@pytest.mark.parametrize("spec", ["8", "exp:30", "exp:0.05", "uniform:5:60", "uniform:0:0.3"])
def test_every_drawn_delay_falls_in_a_declared_bucket_whose_queue_holds_it_no_longer_than_its_width(spec: str) -> None:
    delay = LabelDelay.parse(spec)
    rng = random.Random(5)
    declared = set(delay.buckets())
    for _ in range(20_000):
        drawn = delay.draw(rng)
        assert delay.kind != "exp" or drawn <= delay.high
        bucket = bucket_of(drawn)
        assert bucket in declared
        # The bucket's delays run from its start to the next one's: the most a label can wait
        # behind another in its queue is that width.
        assert bucket_start_s(bucket) <= drawn < bucket_start_s(bucket + 1)
        width = bucket_start_s(bucket + 1) - bucket_start_s(bucket)
        assert width <= max(drawn * (BUCKET_RATIO - 1), SMALLEST_BUCKET_S * BUCKET_RATIO) + 1e-9


def test_a_fixed_delay_uses_one_bucket_exactly_and_no_delay_none() -> None:
    assert len(LabelDelay.parse("8").buckets()) == 1 and bucket_start_s(bucket_of(8)) == pytest.approx(8.0)
    assert LabelDelay.parse("0").buckets() == []


def test_exp_draws_have_the_asked_mean() -> None:
    rng = random.Random(11)
    delay = LabelDelay.parse("exp:30")
    draws = [delay.draw(rng) for _ in range(50_000)]
    assert sum(draws) / len(draws) == pytest.approx(30, rel=0.02)
    assert min(draws) >= 0


@pytest.mark.parametrize(("seconds", "ms"), [(8.0, 8000), (0.0, 0), (0.0004, 1), (1.2345, 1235), (30.0000001, 30001)])
def test_expiration_is_whole_milliseconds_never_shorter_than_the_delay(seconds: float, ms: int) -> None:
    assert expiration_ms(seconds) == ms
