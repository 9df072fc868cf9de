"""The label/prediction join, run against both HalfStores: the in-memory fake and SQLite.

Every behavioural test takes the ``join`` fixture, so the same assertions hold for
``MemoryHalfStore`` and for ``SqliteHalfStore`` (on a file under tmp_path, each call in
its own BEGIN/COMMIT, or a batch of calls in one, as the service does).
"""

import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.metric_rows import MetricRow
from services.metric_api.join import (
    LABEL,
    PREDICTION,
    Conflict,
    Duplicate,
    HalfStore,
    Held,
    Joined,
    Kind,
    LabelPredictionJoin,
    MemoryHalfStore,
    Outcome,
    other,
)
from services.metric_api.store import SqliteHalfStore

ID = "1669147134.196809"


@dataclass
class JoinUnderTest:
    store: HalfStore
    transaction: Callable[[], AbstractContextManager[None]]

    def add(self, kind: Kind, sample_id: str, value: float, arrived_at: float = 1669147134.0) -> Outcome:
        """One half in its own transaction."""
        with self.transaction():
            return LabelPredictionJoin(self.store).add(kind, sample_id, value, arrived_at)

    def add_batch(self, halves: list[tuple[Kind, str, float]], arrived_at: float) -> list[Outcome]:
        """Several halves in one transaction, as the service applies a batch."""
        with self.transaction():
            join = LabelPredictionJoin(self.store)
            return [join.add(kind, sample_id, value, arrived_at) for kind, sample_id, value in halves]

    def nothing_held_for(self, sample_id: str) -> bool:
        return self.store.held_halves(sample_id) == {}

    def held(self, sample_id: str, kind: Kind) -> float | None:
        """The value of ``sample_id``'s half of ``kind`` waiting in the store, if one is."""
        half = self.store.held_halves(sample_id).get(kind)
        return None if half is None else half.value


@pytest.fixture(params=["memory", "sqlite"])
def join(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JoinUnderTest]:
    if request.param == "memory":
        yield JoinUnderTest(MemoryHalfStore(), nullcontext)
        return
    store = SqliteHalfStore(tmp_path / "metric_state.sqlite3")
    try:
        yield JoinUnderTest(store, store.transaction)
    finally:
        store.close()


# --- joining ---------------------------------------------------------------------------


def test_label_then_prediction_joins(join: JoinUnderTest) -> None:
    assert join.add(LABEL, ID, 151.0) == Held()
    outcome = join.add(PREDICTION, ID, 150.375)
    assert outcome == Joined(MetricRow(ID, y_true=151.0, y_pred=150.375, absolute_error=0.625))
    assert join.store.written(ID) == MetricRow(ID, 151.0, 150.375, 0.625)
    assert join.nothing_held_for(ID)


def test_prediction_then_label_joins_with_the_values_in_their_own_columns(join: JoinUnderTest) -> None:
    assert join.add(PREDICTION, ID, 310.25) == Held()
    outcome = join.add(LABEL, ID, 25.0)
    # The prediction is too high: the error is still positive.
    assert outcome == Joined(MetricRow(ID, y_true=25.0, y_pred=310.25, absolute_error=285.25))
    assert join.store.written(ID) == MetricRow(ID, 25.0, 310.25, 285.25)
    assert join.nothing_held_for(ID)


@pytest.mark.parametrize("first", [LABEL, PREDICTION])
@pytest.mark.parametrize(
    ("y_true", "y_pred", "error"),
    [
        (151.0, 150.37, 0.6299999999999955),  # 151.0 - 150.37 in binary floating point
        (0.1, 0.3, 0.19999999999999998),
        (206.11666666666667, 206.11666666666667, 0.0),
        (-3.5, 2.25, 5.75),
    ],
)
def test_absolute_error_is_the_distance_between_label_and_prediction(
    join: JoinUnderTest, first: Kind, y_true: float, y_pred: float, error: float
) -> None:
    assert error == abs(y_true - y_pred)  # the hand-written value is the float the CSV must hold
    values = {LABEL: y_true, PREDICTION: y_pred}
    second: Kind = PREDICTION if first == LABEL else LABEL
    assert join.add(first, ID, values[first]) == Held()
    outcome = join.add(second, ID, values[second])
    assert isinstance(outcome, Joined)
    assert (outcome.row.id, outcome.row.y_true, outcome.row.y_pred) == (ID, y_true, y_pred)
    assert outcome.row.absolute_error == error


@pytest.mark.parametrize("kind", [LABEL, PREDICTION])
def test_a_lone_half_is_held(join: JoinUnderTest, kind: Kind) -> None:
    assert join.add(kind, ID, 151.0) == Held()
    assert join.held(ID, kind) == 151.0
    assert join.held(ID, other(kind)) is None
    assert join.store.written(ID) is None


@pytest.mark.parametrize("kind", [LABEL, PREDICTION])
def test_a_partner_after_its_half_expired_is_a_conflict_saying_so_and_the_half_again_a_duplicate(
    join: JoinUnderTest, kind: Kind
) -> None:
    assert join.add(kind, ID, 151.0) == Held()
    with join.transaction():
        join.store.expire([(ID, kind)], 1669147200.0)  # type: ignore[attr-defined]  # both stores have it; not the join's protocol
    assert join.nothing_held_for(ID)
    late = join.add(other(kind), ID, 150.0)
    assert isinstance(late, Conflict) and "expired" in late.reason and "HALF_RETENTION_S" in late.reason
    assert join.add(kind, ID, 151.0) == Duplicate()
    assert join.nothing_held_for(ID) and join.store.written(ID) is None


def test_halves_of_different_ids_do_not_join(join: JoinUnderTest) -> None:
    assert join.add(LABEL, "1669147134.000001", 1.0) == Held()
    assert join.add(PREDICTION, "1669147134.000002", 2.0) == Held()
    assert join.store.written("1669147134.000001") is None
    assert join.store.written("1669147134.000002") is None
    assert join.held("1669147134.000001", LABEL) == 1.0
    assert join.held("1669147134.000002", PREDICTION) == 2.0


# --- redeliveries ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", [LABEL, PREDICTION])
def test_the_same_half_again_while_held_is_a_duplicate(join: JoinUnderTest, kind: Kind) -> None:
    assert join.add(kind, ID, 151.0) == Held()
    assert join.add(kind, ID, 151.0) == Duplicate()
    assert join.add(kind, ID, 151.0) == Duplicate()
    assert join.held(ID, kind) == 151.0
    # The partner still joins once, with the held value.
    partner: Kind = other(kind)
    outcome = join.add(partner, ID, 150.5)
    assert isinstance(outcome, Joined)
    assert outcome.row.absolute_error == 0.5
    assert join.nothing_held_for(ID)


def test_either_half_again_after_its_row_is_written_is_a_duplicate(join: JoinUnderTest) -> None:
    join.add(LABEL, ID, 151.0)
    join.add(PREDICTION, ID, 150.5)
    assert join.add(LABEL, ID, 151.0) == Duplicate()
    assert join.add(PREDICTION, ID, 150.5) == Duplicate()
    assert join.add(PREDICTION, ID, 150.5) == Duplicate()
    # No second row, nothing left waiting.
    assert join.store.written(ID) == MetricRow(ID, 151.0, 150.5, 0.5)
    assert join.nothing_held_for(ID)


# --- conflicts -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [LABEL, PREDICTION])
def test_another_value_for_a_held_half_is_a_conflict_naming_the_id_and_both_values(join: JoinUnderTest, kind: Kind) -> None:
    assert join.add(kind, ID, 151.0) == Held()
    outcome = join.add(kind, ID, 152.5)
    assert isinstance(outcome, Conflict)
    assert ID in outcome.reason
    assert "151.0" in outcome.reason
    assert "152.5" in outcome.reason
    # The first value stays; the conflicting one is not kept.
    assert join.held(ID, kind) == 151.0
    partner: Kind = other(kind)
    joined = join.add(partner, ID, 150.0)
    assert isinstance(joined, Joined)
    assert joined.row.absolute_error == 1.0


@pytest.mark.parametrize(("kind", "kept", "other_value"), [(LABEL, "151.0", 99.25), (PREDICTION, "150.5", 0.125)])
def test_another_value_after_the_row_is_written_is_a_conflict_naming_the_id_and_both_values(
    join: JoinUnderTest, kind: Kind, kept: str, other_value: float
) -> None:
    join.add(LABEL, ID, 151.0)
    join.add(PREDICTION, ID, 150.5)
    outcome = join.add(kind, ID, other_value)
    assert isinstance(outcome, Conflict)
    assert ID in outcome.reason
    assert kept in outcome.reason
    assert repr(other_value) in outcome.reason  # "99.25" / "0.125"
    assert join.store.written(ID) == MetricRow(ID, 151.0, 150.5, 0.5)
    assert join.nothing_held_for(ID)


@pytest.mark.parametrize("written", [False, True], ids=["held", "written"])
def test_a_prediction_made_again_that_differs_only_in_its_last_bits_is_a_duplicate(join: JoinUnderTest, written: bool) -> None:
    """model_api predicts a redelivered features message again, in a batch of another size:
    BLAS may sum in another order (seen in the compose test after kill -9 of model_api)."""
    first = sum([0.1] * 10)  # 0.9999999999999999
    again = 1.0  # the same sum in another order
    assert first != again
    join.add(PREDICTION, ID, first)
    if written:
        join.add(LABEL, ID, 2.0)
    assert join.add(PREDICTION, ID, again) == Duplicate()
    assert isinstance(join.add(PREDICTION, ID, first * (1 + 1e-6)), Conflict)  # a real difference still is one
    if written:
        assert join.store.written(ID) == MetricRow.of(ID, 2.0, first)  # the first one stays


@pytest.mark.parametrize("written", [False, True], ids=["held", "written"])
def test_a_label_must_repeat_exactly(join: JoinUnderTest, written: bool) -> None:
    join.add(LABEL, ID, 1.0)
    if written:
        join.add(PREDICTION, ID, 2.0)
    assert isinstance(join.add(LABEL, ID, sum([0.1] * 10)), Conflict)


def test_a_conflict_on_one_id_leaves_other_ids_alone(join: JoinUnderTest) -> None:
    join.add(LABEL, "1.000000", 10.0)
    join.add(LABEL, "2.000000", 20.0)
    assert isinstance(join.add(LABEL, "1.000000", 11.0), Conflict)
    assert join.add(PREDICTION, "2.000000", 21.0) == Joined(MetricRow("2.000000", 20.0, 21.0, 1.0))
    assert join.held("1.000000", LABEL) == 10.0


# --- many ids, any order ---------------------------------------------------------------


def test_many_ids_in_random_order_with_random_duplicates_each_join_exactly_once(join: JoinUnderTest) -> None:
    rng = random.Random(20221122)
    n = 1500
    ids = [f"{1669147134 + i}.{(i * 7919) % 1_000_000:06d}" for i in range(n)]
    labels = {sample_id: rng.uniform(25, 346) for sample_id in ids}
    predictions = {sample_id: rng.uniform(25, 346) for sample_id in ids}
    deliveries: list[tuple[Kind, str, float]] = []
    for sample_id in ids:
        deliveries += [(LABEL, sample_id, labels[sample_id])] * rng.randint(1, 3)
        deliveries += [(PREDICTION, sample_id, predictions[sample_id])] * rng.randint(1, 3)
    rng.shuffle(deliveries)

    # Where each id must join: at the first delivery of whichever half comes second.
    first_seen: dict[tuple[Kind, str], int] = {}
    for position, (kind, sample_id, _) in enumerate(deliveries):
        first_seen.setdefault((kind, sample_id), position)
    expected_join_at = {sample_id: max(first_seen[(LABEL, sample_id)], first_seen[(PREDICTION, sample_id)]) for sample_id in ids}

    outcomes: list[Outcome] = []
    position = 0
    while position < len(deliveries):
        size = rng.randint(1, 60)
        outcomes += join.add_batch(deliveries[position : position + size], arrived_at=1669147134.0 + position)
        position += size
    assert len(outcomes) == len(deliveries)

    joined_at: dict[str, int] = {}
    kinds_of_outcome = {"held": 0, "duplicate": 0}
    for position, outcome in enumerate(outcomes):
        sample_id = deliveries[position][1]
        if isinstance(outcome, Joined):
            assert sample_id not in joined_at, f"{sample_id} joined twice"
            joined_at[sample_id] = position
            assert outcome.row == MetricRow(
                sample_id,
                labels[sample_id],
                predictions[sample_id],
                abs(labels[sample_id] - predictions[sample_id]),
            )
        elif isinstance(outcome, Held):
            kinds_of_outcome["held"] += 1
        elif isinstance(outcome, Duplicate):
            kinds_of_outcome["duplicate"] += 1
        else:
            pytest.fail(f"unexpected {outcome!r} for {deliveries[position]}")

    assert joined_at == expected_join_at
    assert kinds_of_outcome == {"held": n, "duplicate": len(deliveries) - 2 * n}
    for sample_id in ids:
        assert join.nothing_held_for(sample_id)
        row = join.store.written(sample_id)
        assert row is not None
        assert (row.y_true, row.y_pred) == (labels[sample_id], predictions[sample_id])


# --- MetricRow -------------------------------------------------------------------------


@pytest.mark.parametrize("first", [LABEL, PREDICTION])
def test_a_pair_whose_error_is_not_a_finite_number_never_makes_a_row(join: JoinUnderTest, first: Kind) -> None:
    """Halves held from before the queues bounded their values: 1.7e308 - -1.7e308 is inf."""
    values = {LABEL: 1.7e308, PREDICTION: -1.7e308}
    assert join.add(first, ID, values[first]) == Held()
    outcome = join.add(other(first), ID, values[other(first)])
    assert isinstance(outcome, Conflict) and "not a finite number" in outcome.reason
    assert join.store.written(ID) is None
    assert join.held(ID, first) == values[first]  # still held: it becomes an orphan, counted, not lost
