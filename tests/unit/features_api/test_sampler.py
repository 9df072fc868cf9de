import itertools
import re

import numpy as np
import pytest
from sklearn.datasets import load_diabetes

from services.common.messages import FEATURE_NAMES
from services.features_api.sampler import DiabetesSampler, SampleIdClock, Scenario

ID_FORMAT = re.compile(r"^\d+\.\d{6}$")


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray]:
    return load_diabetes(return_X_y=True)


def as_micros(sample_id: str) -> int:
    """The id read back as an integer count of microseconds, by hand."""
    seconds, micros = sample_id.split(".")
    return int(seconds) * 1_000_000 + int(micros)


def test_every_sample_is_a_diabetes_row_with_its_target(diabetes: tuple[np.ndarray, np.ndarray]) -> None:
    features, targets = diabetes
    sampler = DiabetesSampler.diabetes(seed=1)
    rows_seen = set()
    for _ in range(2000):
        sample = sampler.draw()
        assert len(sample.features) == 10
        assert all(type(v) is float for v in sample.features)
        assert type(sample.label) is float
        matches = np.flatnonzero((features == np.asarray(sample.features)).all(axis=1))
        assert len(matches) >= 1, f"{sample.features} is not a row of the diabetes data"
        assert sample.label in {float(targets[i]) for i in matches}
        rows_seen.add(int(matches[0]))
    # Draws range over the dataset, not a handful of rows.
    assert len(rows_seen) > 300


def test_sample_ids_are_unique_increasing_and_well_formed_over_many_draws() -> None:
    sampler = DiabetesSampler.diabetes(seed=2)
    ids = [sampler.draw().id for _ in range(100_000)]
    assert all(ID_FORMAT.match(i) for i in ids)
    micros = [as_micros(i) for i in ids]
    assert all(b > a for a, b in itertools.pairwise(micros))


def test_sample_ts_is_the_id_as_a_number() -> None:
    sample = DiabetesSampler.diabetes(seed=3).draw()
    assert sample.ts == pytest.approx(as_micros(sample.id) / 1_000_000, abs=1e-6)


def test_a_frozen_clock_still_gives_unique_increasing_ids() -> None:
    clock = SampleIdClock(now=lambda: 1669147134.196809)
    ids = [clock.next()[0] for _ in range(100_000)]
    assert all(ID_FORMAT.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    micros = [as_micros(i) for i in ids]
    assert all(b > a for a, b in itertools.pairwise(micros))
    assert ids[0] == "1669147134.196809"
    assert ids[1] == "1669147134.196810"
    assert ids[-1] == "1669147134.296808"  # 196809 + 99_999 microseconds


def test_a_clock_going_backwards_never_repeats_an_id() -> None:
    times = iter([1669147134.5, 1669147134.4, 1669147130.0, 1669147134.500001, 1669147135.0])
    clock = SampleIdClock(now=lambda: next(times))
    ids = [clock.next()[0] for _ in range(5)]
    assert ids == [
        "1669147134.500000",
        "1669147134.500001",
        "1669147134.500002",
        "1669147134.500003",
        "1669147135.000000",
    ]


@pytest.mark.parametrize(
    ("now", "expected_id"),
    [
        (1669147134.196809, "1669147134.196809"),
        (1669147134.0, "1669147134.000000"),
        (1669147134.000001, "1669147134.000001"),
        (1669147134.05, "1669147134.050000"),
        (1700000000.999999, "1700000000.999999"),
        (1.5, "1.500000"),
    ],
)
def test_the_id_of_a_known_time_is_its_seconds_dot_microseconds_text(now: float, expected_id: str) -> None:
    sample_id, ts = SampleIdClock(now=lambda: now).next()
    assert sample_id == expected_id
    assert ts == pytest.approx(now, abs=1e-6)


def test_a_seed_makes_draws_reproducible() -> None:
    first, second = DiabetesSampler.diabetes(seed=42), DiabetesSampler.diabetes(seed=42)
    a = [(s.features, s.label) for s in (first.draw() for _ in range(200))]
    b = [(s.features, s.label) for s in (second.draw() for _ in range(200))]
    assert a == b


def test_different_seeds_draw_different_sequences() -> None:
    first, second = DiabetesSampler.diabetes(seed=1), DiabetesSampler.diabetes(seed=2)
    a = [first.draw().label for _ in range(50)]
    b = [second.draw().label for _ in range(50)]
    assert a != b


def test_a_custom_matrix_is_sampled_by_row() -> None:
    features = np.arange(30, dtype=float).reshape(3, 10)
    targets = np.array([100.0, 200.0, 300.0])
    sampler = DiabetesSampler(features, targets, seed=0)
    for _ in range(100):
        sample = sampler.draw()
        row = int(sample.features[0]) // 10
        assert sample.features == [float(v) for v in range(row * 10, row * 10 + 10)]
        assert sample.label == targets[row]


@pytest.mark.parametrize(
    ("features", "targets"),
    [
        (np.zeros(10), np.zeros(1)),  # one row given as 1-D
        (np.zeros((3, 10)), np.zeros(2)),  # fewer targets than rows
        (np.zeros((3, 10)), np.zeros(4)),  # more targets than rows
        (np.zeros((0, 10)), np.zeros(0)),  # nothing to draw from
        (np.zeros((2, 5, 10)), np.zeros(2)),  # 3-D
    ],
    ids=["1-D", "too-few-targets", "too-many-targets", "empty", "3-D"],
)
def test_bad_inputs_are_refused(features: np.ndarray, targets: np.ndarray) -> None:
    with pytest.raises(ValueError, match="feature matrix"):
        DiabetesSampler(features, targets)


def test_a_scenario_shifts_scales_and_adds_noise_in_std_units_and_leaves_the_labels() -> None:
    plain, changed = DiabetesSampler.diabetes(seed=5), DiabetesSampler.diabetes(seed=5)
    data = load_diabetes().data
    mean, std = data.mean(axis=0), data.std(axis=0)
    bmi, s5 = FEATURE_NAMES.index("bmi"), FEATURE_NAMES.index("s5")
    changed.set_scenario(Scenario(shift={"bmi": 1.0}, scale={"s5": 2.0}, since=1.0))
    for _ in range(50):
        a, b = plain.draw(), changed.draw()
        assert b.label == a.label
        assert b.features[bmi] == pytest.approx(a.features[bmi] + std[bmi])
        assert b.features[s5] == pytest.approx(mean[s5] + 2 * (a.features[s5] - mean[s5]))
        others = [i for i in range(10) if i not in (bmi, s5)]
        assert [b.features[i] for i in others] == pytest.approx([a.features[i] for i in others])
    changed.set_scenario(Scenario())  # ended: the data as it is again
    assert not changed.scenario.active and changed.draw().features == plain.draw().features


def test_noise_has_the_asked_std_and_no_bias() -> None:
    sampler = DiabetesSampler.diabetes(seed=3)
    sampler.set_scenario(Scenario(noise={"age": 2.0}, since=1.0))
    data = load_diabetes().data
    drawn = np.array([sampler.draw().features for _ in range(4000)])
    age = FEATURE_NAMES.index("age")
    # the drawn variance is the data's plus the noise's: (1 + 2²) std²
    assert drawn[:, age].std() == pytest.approx(np.sqrt(5) * data[:, age].std(), rel=0.05)
    assert abs(drawn[:, age].mean() - data[:, age].mean()) < 0.1 * data[:, age].std()


@pytest.mark.parametrize(
    ("scenario", "refusal"),
    [
        ({"shift": {"bmx": 1.0}}, "unknown feature 'bmx': the features are age, sex, bmi"),
        ({"shift": {"bmi": 11.0}}, "shift of bmi must be between -10 and 10"),
        ({"scale": {"bmi": -1.0}}, "scale of bmi must be between 0 and 10"),
        ({"noise": {"bmi": float("nan")}}, "noise of bmi"),
    ],
)
def test_a_scenario_out_of_bounds_or_for_an_unknown_feature_is_refused(scenario: dict, refusal: str) -> None:
    with pytest.raises(ValueError, match=refusal):
        Scenario(**scenario)
