"""MetricLedger: the CSV and the state agree after a crash between them, orphans are swept to their
own file, and the statistics are rebuilt from what is on disk."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.common.files import METRIC_LOG, METRIC_STATE, ORPHAN_LOG
from services.common.messages import LabelMessage, PredictionMessage
from services.common.metric_rows import ORPHAN_LOG_HEADER, MetricRow, format_rows, parse_orphan, parse_row
from services.metric_api.csvlog import MetricLogError
from services.metric_api.join import Kind
from services.metric_api.ledger import LedgerFilesChanged, MetricLedger
from services.metric_api.stats import QualityStats


def sid(n: int) -> str:
    return f"1700000000.{n:06d}"


def halves(*items: tuple[Kind, int, float]) -> list[tuple[Kind, LabelMessage | PredictionMessage]]:
    made: list[tuple[Kind, LabelMessage | PredictionMessage]] = []
    for kind, n, value in items:
        message = LabelMessage(id=sid(n), body=value) if kind == "y_true" else PredictionMessage(id=sid(n), body=value)
        made.append((kind, message))
    return made


def opened(logs: Path) -> tuple[MetricLedger, QualityStats]:
    ledger, quality = MetricLedger(logs), QualityStats(None)
    ledger.open(quality)
    return ledger, quality


def csv_rows(logs: Path) -> list[MetricRow]:
    return [parse_row(line) for line in (logs / METRIC_LOG).read_text().splitlines()[1:]]


def test_rows_appended_just_before_a_crash_are_recorded_at_the_next_open(tmp_path: Path) -> None:
    ledger, _ = opened(tmp_path)
    ledger.record(halves(("y_true", 1, 151.0), ("y_pred", 1, 150.0), ("y_pred", 2, 90.0)), now=1.0)
    ledger.close()
    # The crash: the label of id 2 made its row, appended and fsynced, but the commit never happened.
    with (tmp_path / METRIC_LOG).open("a") as f:
        f.write(format_rows([MetricRow.of(sid(2), 100.0, 90.0)]))

    ledger, quality = opened(tmp_path)
    redelivered = ledger.record(halves(("y_true", 2, 100.0), ("y_pred", 2, 90.0)), now=2.0)
    assert redelivered.rows == [] and redelivered.duplicates == 2  # not a second row
    assert [row.id for row in csv_rows(tmp_path)] == [sid(1), sid(2)]
    assert quality.count == 2 and ledger.pending("y_pred") == 0  # the held prediction was released
    ledger.close()


def pairs(first: int, last: int) -> list[tuple[Kind, LabelMessage | PredictionMessage]]:
    """Label and prediction of ids first..last: one row each, y_true 100 + n, y_pred 100 + n / 2."""
    return halves(*[item for n in range(first, last + 1) for item in (("y_true", n, 100.0 + n), ("y_pred", n, 100.0 + n / 2))])


def expected_lines(first: int, last: int) -> list[str]:
    return [format_rows([MetricRow.of(sid(n), 100.0 + n, 100.0 + n / 2)]) for n in range(first, last + 1)]


def test_a_csv_replaced_by_a_shorter_one_gets_the_missing_rows_back_from_the_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The rows were acked: the broker never brings them again, so only the state can."""
    ledger, _ = opened(tmp_path)
    ledger.record(pairs(1, 3), now=1.0)
    ledger.close()
    kept = csv_rows(tmp_path)[:1]
    (tmp_path / METRIC_LOG).write_text("id,y_true,y_pred,absolute_error\n" + format_rows(kept))

    ledger, quality = opened(tmp_path)
    assert "had 1 of the 3 rows written: the 2 missing were written back" in caplog.text
    assert (tmp_path / METRIC_LOG).read_text().splitlines()[1:] == [line.rstrip("\n") for line in expected_lines(1, 3)]
    assert quality.count == 3
    again = ledger.record(pairs(3, 3), now=2.0)  # a redelivery is still a duplicate
    assert again.rows == [] and again.duplicates == 2
    ledger.close()


def damage_delete(csv: Path) -> None:
    csv.unlink()


def damage_truncate(csv: Path) -> None:
    csv.write_bytes(b"")  # : > metric_log.csv


def damage_cut_mid_line(csv: Path) -> None:
    with csv.open("rb+") as f:
        f.truncate(len(csv.read_bytes()) // 2)


def damage_rotate(csv: Path) -> None:
    csv.rename(csv.with_name(csv.name + ".1"))  # what logrotate does, without "copytruncate"


def damage_rotate_and_create(csv: Path) -> None:
    csv.rename(csv.with_name(csv.name + ".1"))
    csv.write_text("id,y_true,y_pred,absolute_error\n")  # logrotate's "create"


@pytest.mark.parametrize(
    "damage",
    [damage_delete, damage_truncate, damage_cut_mid_line, damage_rotate, damage_rotate_and_create],
    ids=lambda f: f.__name__,
)
def test_a_csv_damaged_while_open_is_noticed_before_the_next_append_and_made_whole(tmp_path: Path, damage: Any) -> None:
    ledger, _ = opened(tmp_path)
    ledger.record(pairs(1, 40), now=1.0)
    csv = tmp_path / METRIC_LOG
    damage(csv)
    assert ledger.changed() is not None and str(csv) in (ledger.changed() or "")
    with pytest.raises(LedgerFilesChanged):
        ledger.record(pairs(41, 41), now=2.0)  # nothing is written into a file nobody reads any more
    ledger.open(QualityStats(None))  # what the service does then
    assert ledger.changed() is None
    ledger.record(pairs(41, 50), now=3.0)
    ledger.close()
    assert csv.read_text() == "id,y_true,y_pred,absolute_error\n" + "".join(expected_lines(1, 50))


def test_a_csv_deleted_while_the_service_was_stopped_is_rebuilt_in_its_order(tmp_path: Path) -> None:
    ledger, _ = opened(tmp_path)
    for n in range(1, 21):
        ledger.record(halves(("y_pred", n, 100.0 + n / 2)), now=float(n))
    ledger.record(halves(*[("y_true", n, 100.0 + n) for n in range(20, 0, -1)]), now=30.0)  # joined newest first
    written = (tmp_path / METRIC_LOG).read_text()
    ledger.close()
    (tmp_path / METRIC_LOG).unlink()
    ledger, quality = opened(tmp_path)
    ledger.close()
    assert (tmp_path / METRIC_LOG).read_text() == written
    assert quality.count == 20


def test_a_state_file_deleted_while_open_is_written_back_with_every_held_half(tmp_path: Path) -> None:
    ledger, _ = opened(tmp_path)
    ledger.record(pairs(1, 5), now=1.0)
    ledger.record(halves(("y_pred", 6, 90.0)), now=2.0)  # waits for its label
    state = tmp_path / METRIC_STATE
    state.unlink()
    assert ledger.changed() is not None
    with pytest.raises(LedgerFilesChanged):
        ledger.record(halves(("y_true", 6, 95.0)), now=3.0)
    ledger.open(QualityStats(None))
    assert state.exists() and ledger.pending("y_pred") == 1
    joined = ledger.record(halves(("y_true", 6, 95.0)), now=4.0)
    assert [row.id for row in joined.rows] == [sid(6)]
    again = ledger.record(pairs(1, 1), now=5.0)  # still known as written
    assert again.duplicates == 2
    ledger.close()


def test_the_dead_lettered_count_is_kept_in_the_state(tmp_path: Path) -> None:
    ledger, _ = opened(tmp_path)
    assert (ledger.dead_lettered, ledger.count_dead_lettered(3), ledger.count_dead_lettered(2)) == (0, 3, 5)
    ledger.close()
    ledger, _ = opened(tmp_path)
    assert ledger.dead_lettered == 5
    ledger.close()


def test_the_statistics_are_rebuilt_from_the_csv(tmp_path: Path) -> None:
    ledger, _ = opened(tmp_path)
    values = [(n, 100.0 + n, 100.0 + n * 1.5) for n in range(1, 30)]
    ledger.record(halves(*[("y_true", n, t) for n, t, _ in values], *[("y_pred", n, p) for n, _, p in values]), now=1.0)
    ledger.close()
    ledger, quality = opened(tmp_path)
    ledger.close()
    errors = np.array([abs(t - p) for _, t, p in values])
    window = quality.summary(now=2.0)["windows"]["all"]
    assert window["count"] == 29 and window["mae"] == pytest.approx(errors.mean(), rel=1e-12)


def test_halves_past_their_time_are_swept_to_orphans_csv_once(tmp_path: Path) -> None:
    ledger, _ = opened(tmp_path)
    ledger.record(halves(("y_pred", 1, 90.0)), now=100.0)
    ledger.record(halves(("y_true", 2, 151.0)), now=200.0)
    swept = ledger.sweep_orphans(arrived_before=150.0)
    assert [(o.id, o.kind, o.value) for o in swept] == [(sid(1), "y_pred", 90.0)]
    assert ledger.sweep_orphans(arrived_before=150.0) == []
    lines = (tmp_path / ORPHAN_LOG).read_text().splitlines()
    assert lines[0] == ORPHAN_LOG_HEADER and [parse_orphan(line) for line in lines[1:]] == swept
    assert ledger.pending("y_pred") == 0 and ledger.pending("y_true") == 1
    ledger.close()
    ledger, _ = opened(tmp_path)
    assert ledger.orphans == 1  # counted across restarts
    ledger.close()


def test_a_torn_last_line_is_dropped_at_open(tmp_path: Path) -> None:
    ledger, _ = opened(tmp_path)
    ledger.record(halves(("y_true", 1, 151.0), ("y_pred", 1, 150.0)), now=1.0)
    ledger.close()
    with (tmp_path / METRIC_LOG).open("a") as f:
        f.write(f"{sid(2)},100.0,9")  # the append a crash cut short
    ledger, quality = opened(tmp_path)
    assert [row.id for row in csv_rows(tmp_path)] == [sid(1)] and quality.count == 1
    ledger.close()


def test_a_csv_truncated_while_a_batch_is_appended_is_noticed_and_made_whole(tmp_path: Path) -> None:
    """Truncated between the check and the append: the batch lands at the start of an empty file,
    headerless, and the file's size alone would say nothing afterwards."""
    ledger, _ = opened(tmp_path)
    ledger.record(pairs(1, 10), now=1.0)
    csv = tmp_path / METRIC_LOG
    ledger.csv.changed = lambda: None  # type: ignore[method-assign]  # the check has just passed...
    csv.write_bytes(b"")  # ... when the file is truncated
    ledger.record(pairs(11, 12), now=2.0)
    del ledger.csv.changed
    assert csv.read_text() == "".join(expected_lines(11, 12))  # headerless: what the append made of it
    assert ledger.changed() is not None
    ledger.open(QualityStats(None))
    ledger.close()
    assert csv.read_text() == "id,y_true,y_pred,absolute_error\n" + "".join(expected_lines(1, 12))
    [aside] = tmp_path.glob(f"{METRIC_LOG}.damaged-*")
    assert aside.read_text() == "".join(expected_lines(11, 12))  # kept for the user


def test_a_csv_with_a_line_that_is_no_row_is_set_aside_and_made_again_when_the_state_has_rows(tmp_path: Path) -> None:
    ledger, _ = opened(tmp_path)
    ledger.record(pairs(1, 3), now=1.0)
    ledger.close()
    csv = tmp_path / METRIC_LOG
    csv.write_text(
        "id,y_true,y_pred,absolute_error\n1700000000.000001,101.0,101700000000.000002,102.0,101.0,1.0\n"
    )  # lines run together
    ledger, quality = opened(tmp_path)
    ledger.close()
    assert csv.read_text() == "id,y_true,y_pred,absolute_error\n" + "".join(expected_lines(1, 3))
    assert quality.count == 3 and len(list(tmp_path.glob(f"{METRIC_LOG}.damaged-*"))) == 1


def test_a_file_that_is_no_metric_log_is_refused_when_the_state_has_no_rows(tmp_path: Path) -> None:
    (tmp_path / METRIC_LOG).write_text("name,price\nwidget,3\n")
    with pytest.raises(MetricLogError, match="not the header"):
        opened(tmp_path)
