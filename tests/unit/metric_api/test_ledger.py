"""MetricLedger: the CSV and the state agree after a crash between them, orphans are swept to their
own file, and the statistics are rebuilt from what is on disk."""

from pathlib import Path

import numpy as np
import pytest

from services.common.files import METRIC_LOG, ORPHAN_LOG
from services.common.messages import LabelMessage, PredictionMessage
from services.common.metric_rows import ORPHAN_LOG_HEADER, MetricRow, format_rows, parse_orphan, parse_row
from services.metric_api.join import Kind
from services.metric_api.ledger import MetricLedger
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


def test_a_csv_replaced_by_a_shorter_one_is_read_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger, _ = opened(tmp_path)
    ledger.record(halves(*[(kind, n, 100.0 + n) for n in range(1, 4) for kind in ("y_true", "y_pred")]), now=1.0)
    ledger.close()
    kept = csv_rows(tmp_path)[:1]
    (tmp_path / METRIC_LOG).write_text("id,y_true,y_pred,absolute_error\n" + format_rows(kept))

    ledger, quality = opened(tmp_path)
    assert "fewer rows (1) than recorded (3)" in caplog.text
    assert quality.count == 1
    again = ledger.record(halves(("y_true", 3, 103.0), ("y_pred", 3, 103.0)), now=2.0)  # its row was removed by hand
    assert [row.id for row in again.rows] == [sid(3)]
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
