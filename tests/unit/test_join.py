import random

import pytest

from services.metric_api.join import AlreadyWritten, Held, Joined, LabelPredictionJoin, MetricRow


def test_label_then_prediction_joins() -> None:
    join: LabelPredictionJoin[str] = LabelPredictionJoin()
    assert join.add_label("1669147134.196809", 151.0, "label-token") == Held(None)
    outcome = join.add_prediction("1669147134.196809", 150.37, "pred-token")
    assert isinstance(outcome, Joined)
    assert outcome.row.id == "1669147134.196809"
    assert (outcome.row.y_true, outcome.row.y_pred) == (151.0, 150.37)
    assert outcome.row.absolute_error == abs(151.0 - 150.37)
    assert outcome.tokens == ("label-token", "pred-token")


def test_prediction_then_label_joins_with_tokens_in_label_prediction_order() -> None:
    join: LabelPredictionJoin[str] = LabelPredictionJoin()
    assert join.add_prediction("7.000001", 80.5, "pred-token") == Held(None)
    outcome = join.add_label("7.000001", 100.0, "label-token")
    assert isinstance(outcome, Joined)
    assert (outcome.row.y_true, outcome.row.y_pred) == (100.0, 80.5)
    assert outcome.row.absolute_error == abs(100.0 - 80.5)
    assert outcome.tokens == ("label-token", "pred-token")


def test_absolute_error_is_positive_when_the_prediction_is_too_high() -> None:
    join: LabelPredictionJoin[int] = LabelPredictionJoin()
    join.add_label("1", 25.0, 1)
    outcome = join.add_prediction("1", 310.25, 2)
    assert isinstance(outcome, Joined)
    assert outcome.row.absolute_error == 285.25


def test_halves_of_different_ids_do_not_join() -> None:
    join: LabelPredictionJoin[str] = LabelPredictionJoin()
    assert join.add_label("1.000000", 1.0, "a") == Held(None)
    assert join.add_prediction("2.000000", 2.0, "b") == Held(None)
    assert (join.pending_labels, join.pending_predictions) == (1, 1)


@pytest.mark.parametrize("half", ["label", "prediction"])
def test_an_id_already_written_is_reported_for_either_half(half: str) -> None:
    join: LabelPredictionJoin[str] = LabelPredictionJoin(written_ids={"5.000000"})
    add = join.add_label if half == "label" else join.add_prediction
    assert add("5.000000", 1.0, "token") == AlreadyWritten()
    assert (join.pending_labels, join.pending_predictions) == (0, 0)


def test_a_redelivery_after_the_row_is_written_is_not_joined_again() -> None:
    join: LabelPredictionJoin[str] = LabelPredictionJoin()
    join.add_label("9", 10.0, "l1")
    outcome = join.add_prediction("9", 12.0, "p1")
    assert isinstance(outcome, Joined)
    join.written("9")
    assert join.add_label("9", 10.0, "l2") == AlreadyWritten()
    assert join.add_prediction("9", 12.0, "p2") == AlreadyWritten()
    assert (join.pending_labels, join.pending_predictions) == (0, 0)


@pytest.mark.parametrize("half", ["label", "prediction"])
def test_a_second_copy_of_a_held_half_replaces_the_first(half: str) -> None:
    join: LabelPredictionJoin[str] = LabelPredictionJoin()
    add = join.add_label if half == "label" else join.add_prediction
    assert add("3", 1.0, "first") == Held(None)
    assert add("3", 1.0, "second") == Held(replaced="first")
    assert add("3", 1.0, "third") == Held(replaced="second")
    assert join.pending_labels + join.pending_predictions == 1
    assert join.release_all() == ["third"]


def test_pending_counts_follow_held_and_joined_halves() -> None:
    join: LabelPredictionJoin[str] = LabelPredictionJoin()
    for i in range(5):
        join.add_label(f"{i}", 1.0, f"l{i}")
    for i in range(3, 10):
        join.add_prediction(f"{i}", 1.0, f"p{i}")
    # ids 3 and 4 joined; labels 0-2 and predictions 5-9 wait.
    assert join.pending_labels == 3
    assert join.pending_predictions == 5


def test_release_all_returns_every_held_token_and_empties() -> None:
    join: LabelPredictionJoin[str] = LabelPredictionJoin()
    join.add_label("1", 1.0, "l1")
    join.add_label("2", 1.0, "l2")
    join.add_prediction("3", 1.0, "p3")
    assert sorted(join.release_all()) == ["l1", "l2", "p3"]
    assert (join.pending_labels, join.pending_predictions) == (0, 0)
    assert join.release_all() == []
    # Released halves are forgotten: their partner now waits instead of joining.
    assert join.add_prediction("1", 2.0, "p1") == Held(None)


def test_many_interleaved_ids_in_random_order_all_join_exactly_once() -> None:
    rng = random.Random(20221122)
    n = 5000
    labels = {f"{1669147134 + i}.{i % 1_000_000:06d}": rng.uniform(25, 346) for i in range(n)}
    predictions = {sample_id: rng.uniform(25, 346) for sample_id in labels}
    events = [("label", sample_id) for sample_id in labels] + [("prediction", sample_id) for sample_id in labels]
    rng.shuffle(events)

    join: LabelPredictionJoin[tuple[str, str]] = LabelPredictionJoin()
    rows: dict[str, MetricRow] = {}
    for kind, sample_id in events:
        if kind == "label":
            outcome = join.add_label(sample_id, labels[sample_id], (kind, sample_id))
        else:
            outcome = join.add_prediction(sample_id, predictions[sample_id], (kind, sample_id))
        if isinstance(outcome, Joined):
            assert sample_id not in rows, f"{sample_id} joined twice"
            assert outcome.tokens == (("label", sample_id), ("prediction", sample_id))
            rows[sample_id] = outcome.row
            join.written(sample_id)
        else:
            assert outcome == Held(None)

    assert rows.keys() == labels.keys()
    for sample_id, row in rows.items():
        assert (row.y_true, row.y_pred) == (labels[sample_id], predictions[sample_id])
        assert row.absolute_error == abs(labels[sample_id] - predictions[sample_id])
    assert (join.pending_labels, join.pending_predictions) == (0, 0)


def test_duplicated_deliveries_in_random_order_still_give_one_row_per_id() -> None:
    rng = random.Random(7)
    ids = [f"{i}.000000" for i in range(500)]
    events = [(kind, i) for i in ids for kind in ("label", "prediction")] * 3  # every half three times
    rng.shuffle(events)
    join: LabelPredictionJoin[int] = LabelPredictionJoin()
    joined: list[str] = []
    settled_early = 0
    for token, (kind, sample_id) in enumerate(events):
        add = join.add_label if kind == "label" else join.add_prediction
        outcome = add(sample_id, 1.0, token)
        if isinstance(outcome, Joined):
            joined.append(sample_id)
            join.written(sample_id)
        elif isinstance(outcome, Held) and outcome.replaced is not None or isinstance(outcome, AlreadyWritten):
            settled_early += 1
    assert sorted(joined) == sorted(ids)
    # Every delivery is accounted for: two per row, the rest duplicates.
    assert 2 * len(joined) + settled_early == len(events)
    assert join.release_all() == []


# --- MetricRow -------------------------------------------------------------------------


def test_metric_row_of_computes_the_absolute_error() -> None:
    assert MetricRow.of("1", 100.0, 150.5) == MetricRow("1", 100.0, 150.5, 50.5)
    assert MetricRow.of("1", 150.5, 100.0) == MetricRow("1", 150.5, 100.0, 50.5)


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [
        (151.0, 150.37),
        (0.1 + 0.2, 1 / 3),
        (1e-300, 5e-324),
        (1e17, -1e17),
        (346.0, 346.0),
        (25.0, 206.11666666666667),
    ],
)
def test_csv_line_has_four_fields_no_spaces_and_floats_that_read_back_exactly(y_true: float, y_pred: float) -> None:
    row = MetricRow.of("1669147134.196809", y_true, y_pred)
    line = row.csv_line()
    assert line.endswith("\n") and line.count("\n") == 1
    assert " " not in line
    fields = line.rstrip("\n").split(",")
    assert len(fields) == 4
    assert fields[0] == "1669147134.196809"
    assert float(fields[1]) == y_true
    assert float(fields[2]) == y_pred
    assert float(fields[3]) == abs(y_true - y_pred)
