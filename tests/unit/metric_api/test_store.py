"""SqliteHalfStore beyond the HalfStore protocol (that part is in test_join.py): durability,
transactions, the held counts, orphan expiry, and keeping up with the CSV."""

import random
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from services.common.metric_rows import MetricRow
from services.metric_api.join import (
    LABEL,
    PREDICTION,
    Duplicate,
    Held,
    HeldHalf,
    Joined,
    Kind,
    LabelPredictionJoin,
)
from services.metric_api.store import SqliteHalfStore

OpenStore = Callable[[], SqliteHalfStore]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "metric_state.sqlite3"


@pytest.fixture
def open_store(path: Path) -> Iterator[OpenStore]:
    """Open the store file; every store opened is closed afterwards, even when the test fails."""
    opened: list[SqliteHalfStore] = []

    def factory() -> SqliteHalfStore:
        store = SqliteHalfStore(path)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def counted_in_file(path: Path) -> dict[str, int]:
    """Held halves per kind, counted by a separate read-only connection."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        counts = dict(db.execute("SELECT kind, COUNT(*) FROM held GROUP BY kind").fetchall())
    return {"y_true": counts.get("y_true", 0), "y_pred": counts.get("y_pred", 0)}


# --- durability ------------------------------------------------------------------------


def test_held_halves_written_rows_and_counters_survive_closing_and_reopening(open_store: OpenStore) -> None:
    store = open_store()
    with store.transaction():
        store.hold("1.000001", LABEL, HeldHalf(151.0, 1000.5))
        store.hold("1.000002", PREDICTION, HeldHalf(150.25, 1001.5))
        store.hold("1.000003", LABEL, HeldHalf(42.0, 1002.5))
        store.record_written(MetricRow.of("1.000009", 100.0, 90.5))
        store.add_to_counter("csv_rows", 1)
        store.set_counter("orphans", 4)
    store.close()

    again = open_store()
    assert again.held("1.000001", LABEL) == 151.0
    assert again.held("1.000002", PREDICTION) == 150.25
    assert again.held("1.000003", LABEL) == 42.0
    assert again.held("1.000001", PREDICTION) is None
    assert again.held_count == {"y_true": 2, "y_pred": 1}
    assert again.written("1.000009") == MetricRow("1.000009", 100.0, 90.5, 9.5)
    assert again.counter("csv_rows") == 1
    assert again.counter("orphans") == 4
    # The arrival times came back too: the oldest half expires first.
    assert list(again.held_before(1002.0)) == [("1.000001", "y_true", 151.0, 1000.5), ("1.000002", "y_pred", 150.25, 1001.5)]


def test_a_join_committed_before_closing_is_a_duplicate_after_reopening(open_store: OpenStore) -> None:
    store = open_store()
    with store.transaction():
        LabelPredictionJoin(store).add(LABEL, "7.000001", 80.5, 1.0)
        outcome = LabelPredictionJoin(store).add(PREDICTION, "7.000001", 100.0, 2.0)
    assert isinstance(outcome, Joined)
    store.close()

    again = open_store()
    assert LabelPredictionJoin(again).add(LABEL, "7.000001", 80.5, 3.0) == Duplicate()
    assert again.held_count == {"y_true": 0, "y_pred": 0}


def test_work_not_committed_is_gone_after_reopening(open_store: OpenStore) -> None:
    # A crash mid-batch: nothing of the batch was acked, so nothing of it may stay.
    store = open_store()
    with store.transaction():
        store.hold("1.000001", LABEL, HeldHalf(1.0, 1.0))
    store.begin()
    store.hold("1.000002", LABEL, HeldHalf(2.0, 2.0))
    store.release("1.000001", LABEL)
    store.record_written(MetricRow.of("1.000003", 3.0, 4.0))
    store.add_to_counter("csv_rows", 1)
    store.close()

    again = open_store()
    assert again.held("1.000001", LABEL) == 1.0
    assert again.held("1.000002", LABEL) is None
    assert again.written("1.000003") is None
    assert again.counter("csv_rows") == 0
    assert again.held_count == {"y_true": 1, "y_pred": 0}


# --- transactions ----------------------------------------------------------------------


def test_rollback_undoes_holds_releases_written_rows_and_counters_and_restores_held_count(
    open_store: OpenStore,
) -> None:
    store = open_store()
    with store.transaction():
        store.hold("1.000001", LABEL, HeldHalf(1.0, 1.0))
        store.hold("1.000002", PREDICTION, HeldHalf(2.0, 2.0))
        store.set_counter("csv_rows", 5)
    assert store.held_count == {"y_true": 1, "y_pred": 1}

    store.begin()
    store.hold("1.000003", LABEL, HeldHalf(3.0, 3.0))
    store.hold("1.000004", PREDICTION, HeldHalf(4.0, 4.0))
    store.release("1.000001", LABEL)
    store.release("1.000002", PREDICTION)
    store.record_written(MetricRow.of("1.000005", 5.0, 6.0))
    store.add_to_counter("csv_rows", 1)
    assert store.held_count == {"y_true": 1, "y_pred": 1}  # one in, one out, each kind
    store.hold("1.000006", LABEL, HeldHalf(6.0, 6.0))
    assert store.held_count == {"y_true": 2, "y_pred": 1}
    store.rollback()

    assert store.held_count == {"y_true": 1, "y_pred": 1}
    assert store.held("1.000001", LABEL) == 1.0
    assert store.held("1.000002", PREDICTION) == 2.0
    for sample_id, kind in [("1.000003", LABEL), ("1.000004", PREDICTION), ("1.000006", LABEL)]:
        assert store.held(sample_id, kind) is None
    assert store.written("1.000005") is None
    assert store.counter("csv_rows") == 5
    assert counted_in_file(store.path) == {"y_true": 1, "y_pred": 1}


def test_rollback_of_a_batch_that_joined_puts_the_halves_back(open_store: OpenStore) -> None:
    store = open_store()
    join = LabelPredictionJoin(store)
    with store.transaction():
        assert join.add(LABEL, "1.000001", 151.0, 1.0) == Held()
    store.begin()
    assert isinstance(join.add(PREDICTION, "1.000001", 150.0, 2.0), Joined)
    store.rollback()  # e.g. the CSV append failed: the batch is redelivered
    assert store.held_count == {"y_true": 1, "y_pred": 0}
    assert store.written("1.000001") is None
    with store.transaction():
        assert join.add(PREDICTION, "1.000001", 150.0, 3.0) == Joined(MetricRow("1.000001", 151.0, 150.0, 1.0))
    assert store.held_count == {"y_true": 0, "y_pred": 0}


def test_rollback_outside_a_transaction_changes_nothing(open_store: OpenStore) -> None:
    store = open_store()
    with store.transaction():
        store.hold("1.000001", LABEL, HeldHalf(1.0, 1.0))
    store.rollback()
    assert store.held("1.000001", LABEL) == 1.0
    assert store.held_count == {"y_true": 1, "y_pred": 0}


# --- held_count ------------------------------------------------------------------------


def test_held_count_matches_the_file_after_mixed_operations(open_store: OpenStore, path: Path) -> None:
    rng = random.Random(1234)
    store = open_store()
    ids = [f"{1669147134 + i}.{i:06d}" for i in range(300)]
    now = 0.0
    for batch_number in range(120):
        store.begin()
        join = LabelPredictionJoin(store)
        for _ in range(rng.randint(1, 15)):
            now += 1.0
            operation = rng.random()
            sample_id = rng.choice(ids)
            kind: Kind = rng.choice([LABEL, PREDICTION])
            if operation < 0.75:
                # Values fixed per id and kind, so repeats are duplicates; 1 in 20 conflicts.
                value = float(ids.index(sample_id)) + (0.5 if kind == PREDICTION else 0.0)
                if rng.random() < 0.05:
                    value += 1000.0
                join.add(kind, sample_id, value, now)
            elif operation < 0.85:
                store.release(sample_id, kind)  # sometimes held, sometimes not
            elif operation < 0.95:
                store.record_rows_of_csv([MetricRow.of(sample_id, 1.0, 2.0)])
            else:
                for orphan_id, orphan_kind, _value, _arrived in list(store.held_before(now - 50)):
                    store.release(orphan_id, orphan_kind)
        if batch_number % 7 == 3:
            store.rollback()
        else:
            store.commit()
        assert store.held_count == counted_in_file(path), f"after batch {batch_number}"
    assert sum(store.held_count.values()) > 0  # the check above was not only about empty tables
    held_count = store.held_count
    store.close()
    assert open_store().held_count == held_count


# --- orphans ---------------------------------------------------------------------------


def test_held_before_returns_exactly_the_halves_older_than_the_cutoff_oldest_first(open_store: OpenStore) -> None:
    store = open_store()
    halves: list[tuple[str, Kind, float, float]] = [
        ("1.000004", "y_pred", 4.0, 400.0),
        ("1.000001", "y_true", 1.0, 100.0),
        ("1.000005", "y_true", 5.0, 500.0),
        ("1.000003", "y_true", 3.0, 299.999),
        ("1.000002", "y_pred", 2.0, 200.0),
        ("1.000006", "y_pred", 6.0, 300.0),  # exactly at the cutoff: not older
    ]
    with store.transaction():
        for sample_id, kind, value, arrived_at in halves:
            store.hold(sample_id, kind, HeldHalf(value, arrived_at))

    assert list(store.held_before(300.0)) == [
        ("1.000001", "y_true", 1.0, 100.0),
        ("1.000002", "y_pred", 2.0, 200.0),
        ("1.000003", "y_true", 3.0, 299.999),
    ]
    assert list(store.held_before(100.0)) == []
    assert [half[0] for half in list(store.held_before(1e12))] == [
        "1.000001",
        "1.000002",
        "1.000003",
        "1.000006",
        "1.000004",
        "1.000005",
    ]
    # Looking does not release anything.
    assert store.held_count == {"y_true": 3, "y_pred": 3}


def test_held_before_does_not_return_halves_that_joined(open_store: OpenStore) -> None:
    store = open_store()
    join = LabelPredictionJoin(store)
    with store.transaction():
        join.add(LABEL, "1.000001", 1.0, 10.0)
        join.add(LABEL, "1.000002", 2.0, 20.0)
        join.add(PREDICTION, "1.000001", 1.5, 30.0)
    assert list(store.held_before(1000.0)) == [("1.000002", "y_true", 2.0, 20.0)]


# --- keeping up with the CSV -----------------------------------------------------------


def test_record_rows_of_csv_records_the_rows_and_releases_their_held_halves(open_store: OpenStore) -> None:
    store = open_store()
    with store.transaction():
        store.hold("1.000001", LABEL, HeldHalf(151.0, 1.0))  # its row is in the CSV already
        store.hold("1.000002", PREDICTION, HeldHalf(150.0, 2.0))  # its row is in the CSV already
        store.hold("1.000003", LABEL, HeldHalf(10.0, 3.0))  # still waiting for its prediction
    rows = [
        MetricRow.of("1.000001", 151.0, 150.5),
        MetricRow.of("1.000002", 149.0, 150.0),
        MetricRow.of("1.000004", 20.0, 22.0),  # nothing held for this one
    ]
    with store.transaction():
        store.record_rows_of_csv(rows)

    assert store.written("1.000001") == MetricRow("1.000001", 151.0, 150.5, 0.5)
    assert store.written("1.000002") == MetricRow("1.000002", 149.0, 150.0, 1.0)
    assert store.written("1.000004") == MetricRow("1.000004", 20.0, 22.0, 2.0)
    assert store.held("1.000001", LABEL) is None
    assert store.held("1.000002", PREDICTION) is None
    assert store.held("1.000003", LABEL) == 10.0
    assert store.held_count == {"y_true": 1, "y_pred": 0}
    assert counted_in_file(store.path) == {"y_true": 1, "y_pred": 0}
    # A redelivered half of a recorded row does not make a second row.
    join = LabelPredictionJoin(store)
    with store.transaction():
        assert join.add(PREDICTION, "1.000001", 150.5, 4.0) == Duplicate()
        assert join.add(LABEL, "1.000004", 20.0, 4.0) == Duplicate()
    assert store.held_count == {"y_true": 1, "y_pred": 0}


def test_forget_written_empties_the_written_ids_and_keeps_the_held_halves(open_store: OpenStore) -> None:
    store = open_store()
    with store.transaction():
        store.record_rows_of_csv([MetricRow.of(f"1.00000{i}", float(i), 0.0) for i in range(1, 6)])
        store.hold("2.000001", LABEL, HeldHalf(1.0, 1.0))
    with store.transaction():
        store.forget_written()
    for i in range(1, 6):
        assert store.written(f"1.00000{i}") is None
    assert store.held("2.000001", LABEL) == 1.0
    assert store.held_count == {"y_true": 1, "y_pred": 0}
    # Re-reading the CSV records its rows again (what the service does after forgetting).
    with store.transaction():
        store.record_rows_of_csv([MetricRow.of("1.000003", 3.0, 0.0)])
    assert store.written("1.000003") == MetricRow("1.000003", 3.0, 0.0, 3.0)
    assert store.written("1.000004") is None


def test_counters_start_at_zero_accumulate_and_can_be_overwritten(open_store: OpenStore) -> None:
    store = open_store()
    assert store.counter("csv_rows") == 0
    with store.transaction():
        store.add_to_counter("csv_rows", 3)
        store.add_to_counter("csv_rows", 4)
        store.add_to_counter("orphans", 2)
    assert store.counter("csv_rows") == 7
    assert store.counter("orphans") == 2
    with store.transaction():
        store.set_counter("csv_rows", 2)
    assert store.counter("csv_rows") == 2
    with store.transaction():
        store.add_to_counter("csv_rows", 5)
        store.set_counter("fresh", 9)
    assert store.counter("csv_rows") == 7
    assert store.counter("fresh") == 9
    assert store.counter("orphans") == 2


# --- what the CSV has no column for: model version, ts, join time ----------------------


def version_rows(store: SqliteHalfStore) -> list[tuple[str, float, float]]:
    rows = [(v, t, p) for v, trues, preds in store.written_by_version() for t, p in zip(trues, preds, strict=True)]
    return sorted((v, float(t), float(p)) for v, t, p in rows)


def test_a_joined_row_keeps_its_model_version_ts_lag_and_join_time(open_store: OpenStore) -> None:
    store = open_store()
    with store.transaction():
        LabelPredictionJoin(store).add(PREDICTION, "1.000001", 150.5, 10.0, ts=9.5, model_version="v7")
        LabelPredictionJoin(store).add(LABEL, "1.000002", 80.0, 11.0, ts=10.5)
    store.close()
    store = open_store()  # what was held survives a restart with its details
    with store.transaction():
        first = LabelPredictionJoin(store).add(LABEL, "1.000001", 151.0, 12.5, ts=9.5)
        second = LabelPredictionJoin(store).add(PREDICTION, "1.000002", 82.0, 13.0, ts=10.5, model_version="v8")
    assert isinstance(first, Joined) and isinstance(second, Joined)
    assert (first.row.model_version, first.row.ts, first.row.lag_s) == ("v7", 9.5, 2.5)
    assert (second.row.model_version, second.row.ts, second.row.lag_s) == ("v8", 10.5, 2.0)
    assert version_rows(store) == [("v7", 151.0, 150.5), ("v8", 80.0, 82.0)]
    assert store.written_times(["1.000001", "1.000002", "9.999999"], since=0.0) == [12.5, 13.0, None]


def test_join_times_are_read_back_only_as_far_as_needed(open_store: OpenStore) -> None:
    store = open_store()
    ids = [f"1.{i:06d}" for i in range(2000)]
    with store.transaction():
        for i, sample_id in enumerate(ids):
            store.record_written(MetricRow.of(sample_id, 1.0, 2.0), written_at=float(i))
    times = store.written_times(ids, since=1700.0, chunk=100)
    # The newest chunks down to the first one wholly before 1700: 1600-1699 is the last read.
    assert times == [float(i) for i in range(1600, 2000)]


def test_a_state_file_from_before_versions_gets_the_new_columns(path: Path, open_store: OpenStore) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(
            """
            CREATE TABLE held (id TEXT NOT NULL, kind TEXT NOT NULL, value REAL NOT NULL, arrived_at REAL NOT NULL,
                               PRIMARY KEY (id, kind)) WITHOUT ROWID;
            CREATE TABLE written (id TEXT PRIMARY KEY, y_true REAL NOT NULL, y_pred REAL NOT NULL) WITHOUT ROWID;
            CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
            INSERT INTO held VALUES ('1.000001', 'y_pred', 150.0, 1.0);
            INSERT INTO written VALUES ('1.000000', 10.0, 12.0);
            """
        )
    store = open_store()
    with store.transaction():
        outcome = LabelPredictionJoin(store).add(LABEL, "1.000001", 151.0, 2.0)
        LabelPredictionJoin(store).add(PREDICTION, "1.000002", 5.0, 3.0, model_version="v2")
        LabelPredictionJoin(store).add(LABEL, "1.000002", 6.0, 3.0)
    assert isinstance(outcome, Joined) and outcome.row.model_version is None
    assert version_rows(store) == [
        ("unknown", 10.0, 12.0), ("unknown", 151.0, 150.0), ("v2", 6.0, 5.0),
    ]  # fmt: skip


def test_a_version_first_seen_in_a_rolled_back_batch_is_recorded_when_it_comes_again(open_store: OpenStore) -> None:
    store = open_store()
    store.begin()
    store.record_written(MetricRow.of("1.000001", 1.0, 2.0, model_version="v9"))
    store.rollback()
    with store.transaction():
        store.record_written(MetricRow.of("1.000002", 1.0, 2.0, model_version="v9"))
    assert version_rows(store) == [("v9", 1.0, 2.0)]


def test_a_state_it_cannot_open_is_refused_naming_the_file_and_the_os_error(path: Path) -> None:
    """SQLite alone says only "unable to open database file" (here: a folder where the file should be)."""
    path.mkdir()
    with pytest.raises(sqlite3.Error) as refused:
        SqliteHalfStore(path)
    message = str(refused.value)
    assert str(path) in message and "unable to open database file" in message and "Is a directory" in message


def test_rows_are_numbered_in_the_order_they_are_recorded_across_reopening(open_store: OpenStore) -> None:
    store = open_store()
    with store.transaction():
        for sample_id in ("1.000009", "1.000001", "1.000005"):
            store.record_written(MetricRow.of(sample_id, 1.0, 2.0))
    store.close()
    store = open_store()
    with store.transaction():
        store.record_written(MetricRow.of("1.000003", 1.0, 2.0))
        missing = [row.id for chunk in store.rows_missing_from(["1.000001"]) for row in chunk]
    assert missing == ["1.000009", "1.000005", "1.000003"]


def test_a_read_only_logs_folder_is_refused_naming_the_file_and_the_os_error(tmp_path: Path) -> None:
    """What a user sees with a logs/ they cannot write: not only "unable to open database file"."""
    folder = tmp_path / "logs"
    folder.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True, check=False
    ).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root): as root, permissions alone cannot make a folder read-only")
    try:
        with pytest.raises(sqlite3.Error) as refused:
            SqliteHalfStore(folder / "metric_state.sqlite3")
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
    message = str(refused.value)
    assert str(folder / "metric_state.sqlite3") in message and "Read-only file system" in message


def test_held_halves_gives_every_half_of_an_id_in_one_answer_and_only_that_ids(open_store: OpenStore) -> None:
    store = open_store()
    with store.transaction():
        store.hold("1.000001", LABEL, HeldHalf(151.0, 10.0, ts=9.5))
        store.hold("1.000001", PREDICTION, HeldHalf(150.25, 11.0, model_version="v2"))
        store.hold("1.000002", PREDICTION, HeldHalf(7.0, 12.0))
    assert store.held_halves("1.000001") == {
        LABEL: HeldHalf(151.0, 10.0, ts=9.5),
        PREDICTION: HeldHalf(150.25, 11.0, model_version="v2"),
    }
    assert store.held_halves("1.000002") == {PREDICTION: HeldHalf(7.0, 12.0)}
    assert store.held_halves("1.000003") == {}
