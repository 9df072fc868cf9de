"""The demo's sampler: rows of the registered reference with their targets, unique ids, and the
scenarios that change what is drawn — on the diabetes demo and on a mixed schema of named numeric
and categorical features (a house-price table, as a user's own would be)."""

import itertools
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from harness.datasets import CITIES, house_prices
from services.common.reference import ReferenceTable
from services.common.schema import DIABETES_NAMES
from services.features_api.demo import diabetes_table
from services.features_api.sampler import ReferenceSampler, SampleIdClock, Scenario, ScenarioError, scenario_for
from services.model_api.predictor import categorical_objects
from services.model_api.profiling import infer_schema

ID_FORMAT = re.compile(r"^\d+\.\d{6}$")
HOUSE = ["sqft", "city", "built_year", "channel", "garden_m2"]


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray]:
    return load_diabetes(return_X_y=True)


@pytest.fixture(scope="module")
def house() -> tuple[pd.DataFrame, ReferenceTable]:
    """A house-price reference table (what register makes of the user's file), and the rows it holds."""
    frame = house_prices(2000, seed=3)
    schema = infer_schema(frame, HOUSE, "price")
    columns = tuple(
        frame[spec.name].to_numpy(dtype=float, na_value=np.nan) if spec.numeric else categorical_objects(frame[spec.name])
        for spec in schema.features
    )
    predictions = frame["price"].to_numpy() * 0.9
    return frame, ReferenceTable(schema, columns, frame["price"].to_numpy(dtype=float), predictions, "test")


def drawer(sampler: ReferenceSampler, clock: SampleIdClock | None = None):  # type: ignore[no-untyped-def]  # a test helper
    clock = clock or SampleIdClock()
    return lambda: sampler.draw(*clock.next())


def as_micros(sample_id: str) -> int:
    """The id read back as an integer count of microseconds, by hand."""
    seconds, micros = sample_id.split(".")
    return int(seconds) * 1_000_000 + int(micros)


def test_every_sample_is_a_diabetes_row_with_its_target(diabetes: tuple[np.ndarray, np.ndarray]) -> None:
    features, targets = diabetes
    draw = drawer(ReferenceSampler(diabetes_table(), seed=1))
    rows_seen = set()
    for _ in range(2000):
        sample = draw()
        assert len(sample.features) == 10
        assert all(type(v) is float for v in sample.features)
        assert type(sample.label) is float and sample.prediction is None
        matches = np.flatnonzero((features == np.asarray(sample.features)).all(axis=1))
        assert len(matches) >= 1, f"{sample.features} is not a row of the diabetes data"
        assert sample.label in {float(targets[i]) for i in matches}
        rows_seen.add(int(matches[0]))
    # Draws range over the dataset, not a handful of rows.
    assert len(rows_seen) > 300


def test_a_mixed_row_is_a_reference_row_in_schema_order_with_none_where_missing(
    house: tuple[pd.DataFrame, ReferenceTable],
) -> None:
    frame, table = house
    draw = drawer(ReferenceSampler(table, seed=4))
    gardens = [None if np.isnan(garden) else garden for garden in frame["garden_m2"].to_numpy(dtype=float)]
    columns = [frame["sqft"], frame["city"], frame["built_year"], frame["channel"], gardens, frame["price"]]
    rows = set(zip(*columns, strict=True))
    missing_seen = 0
    for _ in range(500):
        sample = draw()
        assert (*sample.features, sample.label) in rows, f"{sample} is not a row of the reference with its target"
        assert isinstance(sample.features[1], str) and isinstance(sample.features[3], str)
        missing_seen += sample.features[4] is None
    assert missing_seen > 10  # about 10 % of the rows have no garden figure


def test_a_model_served_elsewhere_replays_the_reference_files_predictions(house: tuple[pd.DataFrame, ReferenceTable]) -> None:
    _, table = house
    draw = drawer(ReferenceSampler(table, seed=4, with_predictions=True))
    for _ in range(100):
        sample = draw()
        assert sample.prediction == pytest.approx(sample.label * 0.9)


def test_sample_ids_are_unique_increasing_and_well_formed_over_many_draws() -> None:
    draw = drawer(ReferenceSampler(diabetes_table(), seed=2))
    ids = [draw().id for _ in range(100_000)]
    assert all(ID_FORMAT.match(i) for i in ids)
    micros = [as_micros(i) for i in ids]
    assert all(b > a for a, b in itertools.pairwise(micros))


def test_sample_ts_is_the_id_as_a_number() -> None:
    sample = drawer(ReferenceSampler(diabetes_table(), seed=3))()
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
    first, second = drawer(ReferenceSampler(diabetes_table(), seed=42)), drawer(ReferenceSampler(diabetes_table(), seed=42))
    assert [first().features for _ in range(50)] == [second().features for _ in range(50)]


def test_different_seeds_draw_different_sequences() -> None:
    first, second = drawer(ReferenceSampler(diabetes_table(), seed=1)), drawer(ReferenceSampler(diabetes_table(), seed=2))
    assert [first().features for _ in range(50)] != [second().features for _ in range(50)]


def test_a_scenario_shifts_scales_and_adds_noise_in_std_units_and_leaves_the_labels() -> None:
    table = diabetes_table()
    plain, changed = ReferenceSampler(table, seed=5), ReferenceSampler(table, seed=5)
    data = load_diabetes().data
    mean, std = data.mean(axis=0), data.std(axis=0)
    bmi, s5 = DIABETES_NAMES.index("bmi"), DIABETES_NAMES.index("s5")
    changed.set_scenario(scenario_for(table.schema, {"bmi": 1.0}, {"s5": 2.0}, {}, since=1.0))
    a_draw, b_draw = drawer(plain), drawer(changed)
    for _ in range(50):
        a, b = a_draw(), b_draw()
        assert b.label == a.label
        assert b.features[bmi] == pytest.approx(a.features[bmi] + std[bmi])
        assert b.features[s5] == pytest.approx(mean[s5] + 2 * (a.features[s5] - mean[s5]))
        others = [i for i in range(10) if i not in (bmi, s5)]
        assert [b.features[i] for i in others] == pytest.approx([a.features[i] for i in others])
    changed.set_scenario(Scenario())  # ended: the data as it is again
    assert not changed.scenario.active and b_draw().features == a_draw().features


def test_noise_has_the_asked_std_and_no_bias() -> None:
    table = diabetes_table()
    sampler = ReferenceSampler(table, seed=3)
    sampler.set_scenario(scenario_for(table.schema, {}, {}, {"age": 2.0}, since=1.0))
    data = load_diabetes().data
    draw = drawer(sampler)
    drawn = np.array([draw().features for _ in range(4000)])
    age = DIABETES_NAMES.index("age")
    # the drawn variance is the data's plus the noise's: (1 + 2²) std²
    assert drawn[:, age].std() == pytest.approx(np.sqrt(5) * data[:, age].std(), rel=0.05)
    assert abs(drawn[:, age].mean() - data[:, age].mean()) < 0.1 * data[:, age].std()


def test_a_categorical_shift_moves_that_share_of_rows_to_the_category_and_nothing_else(
    house: tuple[pd.DataFrame, ReferenceTable],
) -> None:
    _, table = house
    plain, changed = ReferenceSampler(table, seed=6), ReferenceSampler(table, seed=6)
    changed.set_scenario(scenario_for(table.schema, {"city": {"Nice": 0.5}}, {}, {}, since=1.0))
    draws = [(plain.draw("1.000001", 1.0), changed.draw("1.000001", 1.0)) for _ in range(4000)]
    nice = sum(b.features[1] == "Nice" for _, b in draws) / len(draws)
    # half the rows moved to Nice, the other half keep the reference's share of it (10 %)
    assert nice == pytest.approx(0.5 + 0.5 * CITIES["Nice"], abs=0.03)
    for a, b in draws:
        assert b.label == a.label and [b.features[i] for i in (0, 2, 3)] == [a.features[i] for i in (0, 2, 3)]
        assert b.features[1] in (a.features[1], "Nice")


def test_a_category_the_reference_never_showed_can_be_shifted_to(house: tuple[pd.DataFrame, ReferenceTable]) -> None:
    _, table = house
    sampler = ReferenceSampler(table, seed=7)
    sampler.set_scenario(scenario_for(table.schema, {"channel": "phone"}, {}, {}, since=1.0))
    assert {sampler.draw("1.000001", 1.0).features[3] for _ in range(100)} == {"phone"}


def test_a_single_noise_level_is_every_numeric_features_and_leaves_the_categories(
    house: tuple[pd.DataFrame, ReferenceTable],
) -> None:
    _, table = house
    scenario = scenario_for(table.schema, {}, {}, 0.5, since=1.0)
    assert scenario.noise == {"sqft": 0.5, "built_year": 0.5, "garden_m2": 0.5}


@pytest.mark.parametrize(
    ("shift", "scale", "noise", "where", "refusal"),
    [
        ({"bmx": 1.0}, {}, {}, ("shift", "bmx"), "unknown feature 'bmx': the schema's 5 features are sqft, city"),
        ({"sqft": 11.0}, {}, {}, ("shift", "sqft"), "shift of sqft must be a number between -10 and 10"),
        ({"sqft": "Lyon"}, {}, {}, ("shift", "sqft"), "shift of sqft must be a number"),
        ({}, {"sqft": -1.0}, {}, ("scale", "sqft"), "scale of sqft must be a number between 0 and 10"),
        ({}, {}, {"sqft": float("nan")}, ("noise", "sqft"), "noise of sqft"),
        ({"city": 1.0}, {}, {}, ("shift", "city"), "city is categorical: shift it to a category"),
        ({"city": {"Lyon": 0.7, "Nice": 0.6}}, {}, {}, ("shift", "city"), "add up to 1.3, more than 1"),
        ({"city": {"Lyon": 1.5}}, {}, {}, ("shift", "city to 'Lyon'"), "between 0 and 1"),
        ({}, {"city": 2.0}, {}, ("scale", "city"), "scale applies to numeric features; city is categorical"),
    ],
)
def test_a_scenario_that_does_not_fit_the_schema_is_refused_naming_the_feature(
    house: tuple[pd.DataFrame, ReferenceTable], shift: dict, scale: dict, noise: dict, where: tuple[str, str], refusal: str
) -> None:
    _, table = house
    with pytest.raises(ScenarioError, match=re.escape(refusal)) as refused:
        scenario_for(table.schema, shift, scale, noise)
    assert refused.value.where == where


def test_a_tilt_draws_more_rows_of_high_values_each_with_its_own_label(diabetes: tuple[np.ndarray, np.ndarray]) -> None:
    features, targets = diabetes
    table = diabetes_table()
    sampler = ReferenceSampler(table, seed=8)
    sampler.set_scenario(scenario_for(table.schema, {}, {}, {}, since=1.0, tilt={"bmi": 1.0}))
    draw = drawer(sampler)
    drawn = [draw() for _ in range(3000)]
    bmi = DIABETES_NAMES.index("bmi")
    std = features[:, bmi].std()
    # exp(z)-weighting of a roughly normal column moves its mean up by about one std.
    assert np.mean([s.features[bmi] for s in drawn]) - features[:, bmi].mean() == pytest.approx(std, rel=0.35)
    labels = {tuple(np.round(row, 12)): target for row, target in zip(features, targets, strict=True)}
    assert all(labels[tuple(np.round(s.features, 12))] == s.label for s in drawn[:200])  # a covariate shift: labels true


def test_a_concept_change_keeps_the_inputs_and_moves_the_labels_with_the_feature() -> None:
    table = diabetes_table()
    plain, changed = ReferenceSampler(table, seed=9), ReferenceSampler(table, seed=9)
    changed.set_scenario(scenario_for(table.schema, {}, {}, {}, since=1.0, concept={"bmi": -1.0}))
    data = load_diabetes()
    bmi = DIABETES_NAMES.index("bmi")
    mean, std, target_std = data.data[:, bmi].mean(), data.data[:, bmi].std(), data.target.std()
    for _ in range(50):
        a, b = plain.draw("1.000001", 1.0), changed.draw("1.000001", 1.0)
        assert b.features == a.features
        assert b.label == pytest.approx(a.label - target_std * (a.features[bmi] - mean) / std)


def test_a_tilt_or_concept_out_of_bounds_is_refused_naming_the_feature() -> None:
    table = diabetes_table()
    with pytest.raises(ScenarioError, match="tilt of bmi"):
        scenario_for(table.schema, {}, {}, {}, tilt={"bmi": 30.0})
    with pytest.raises(ScenarioError, match="nope"):
        scenario_for(table.schema, {}, {}, {}, concept={"nope": 1.0})
