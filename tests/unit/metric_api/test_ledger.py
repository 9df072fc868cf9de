"""MetricLedger: the CSV and the state agree after a crash between them, orphans are counted (and
listed) but still join when their partner comes late, and the statistics are rebuilt from what is on disk."""

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from services.common.files import METRIC_LOG, METRIC_STATE, ORPHAN_LOG, RELEASED_ORPHAN_LOG
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


def orphan_lines(logs: Path) -> list[tuple[str, str, float]]:
    lines = (logs / ORPHAN_LOG).read_text().splitlines()
    assert lines[0] == ORPHAN_LOG_HEADER
    return [(o.id, o.kind, o.value) for o in map(parse_orphan, lines[1:])]


def test_an_orphan_stays_held_and_a_partner_coming_after_its_ttl_still_makes_the_row_once(tmp_path: Path) -> None:
    ledger, quality = MetricLedger(tmp_path, orphan_ttl_s=50.0), QualityStats(None)
    ledger.open(quality, now=100.0)
    ledger.record(halves(("y_pred", 1, 90.0)), now=100.0)
    ledger.record(halves(("y_true", 2, 151.0)), now=200.0)
    assert ledger.survey(120.0).newly_orphaned == {"y_true": 0, "y_pred": 0}
    survey = ledger.survey(210.0, write_list=True)
    assert survey.newly_orphaned == {"y_true": 0, "y_pred": 1} and survey.listed == 1
    assert ledger.orphans == 1 and ledger.pending("y_pred") == 0 and ledger.pending("y_true") == 1
    assert orphan_lines(tmp_path) == [(sid(1), "y_pred", 90.0)]
    assert ledger.survey(220.0).newly_orphaned == {"y_true": 0, "y_pred": 0}  # counted once

    late = ledger.record(halves(("y_true", 1, 100.0)), now=5000.0)  # hours after its prediction
    assert [(row.id, row.y_true, row.y_pred, row.label_lag_s) for row in late.rows] == [(sid(1), 100.0, 90.0, 4900.0)]
    assert late.late_joins == 1 and ledger.late_joins == 1 and ledger.orphans == 0
    assert ledger.survey(5000.0, write_list=True).listed == 1  # the label of id 2 is an orphan now
    assert orphan_lines(tmp_path) == [(sid(2), "y_true", 151.0)]
    again = ledger.record(halves(("y_true", 1, 100.0), ("y_pred", 1, 90.0)), now=5001.0)  # redelivered
    assert again.rows == [] and again.duplicates == 2 and again.late_joins == 0
    assert [row.id for row in csv_rows(tmp_path)] == [sid(1)]
    ledger.close()

    ledger, _ = opened(tmp_path)
    assert ledger.late_joins == 1 and ledger.orphans == 1  # counted across restarts, from the state
    ledger.close()


def test_orphans_csv_says_what_is_missing_now_and_is_not_created_while_nothing_is(tmp_path: Path) -> None:
    ledger, quality = MetricLedger(tmp_path, orphan_ttl_s=10.0), QualityStats(None)
    ledger.open(quality, now=0.0)
    ledger.record(halves(("y_pred", 1, 90.0), ("y_true", 1, 91.0)), now=1.0)
    assert ledger.survey(100.0, write_list=True).listed is None and not (tmp_path / ORPHAN_LOG).exists()
    ledger.record(halves(("y_pred", 2, 90.0), ("y_pred", 3, 80.0)), now=100.0)
    ledger.survey(200.0, write_list=True)
    assert orphan_lines(tmp_path) == [(sid(2), "y_pred", 90.0), (sid(3), "y_pred", 80.0)]
    ledger.record(halves(("y_true", 2, 95.0), ("y_true", 3, 85.0)), now=300.0)
    ledger.survey(300.0, write_list=True)
    assert orphan_lines(tmp_path) == []  # the file stays, and says: none missing
    ledger.close()


def test_waiting_halves_are_counted_by_age(tmp_path: Path) -> None:
    ledger, quality = MetricLedger(tmp_path, orphan_ttl_s=3600.0), QualityStats(None)
    ledger.open(quality, now=0.0)
    now = 1_000_000.0
    ages = {1: 5.0, 2: 30.0, 3: 59.0, 4: 601.0, 5: 7200.0, 6: 90_000.0}  # seconds
    ledger.record(halves(*[("y_pred", n, 1.0) for n in ages]), now=0.0)  # arrival times set below
    ledger.close()
    with sqlite3.connect(tmp_path / METRIC_STATE) as db:
        for n, age in ages.items():
            db.execute("UPDATE held SET arrived_at = ? WHERE id = ?", (now - age, sid(n)))
    db.close()
    ledger, _ = opened(tmp_path)
    ledger.record(halves(("y_true", 7, 1.0)), now=now - 1)
    ledger.survey(now)
    assert ledger.waiting["y_pred"] == {"<10s": 1, "10s-1m": 2, "1m-10m": 0, "10m-1h": 1, "1h-1d": 1, ">1d": 1}
    assert ledger.waiting["y_true"] == {"<10s": 1, "10s-1m": 0, "1m-10m": 0, "10m-1h": 0, "1h-1d": 0, ">1d": 0}
    assert ledger.orphans_by_kind == {"y_true": 0, "y_pred": 2}  # the two older than an hour
    assert ledger.waiting_halves("y_pred") == 6 and ledger.pending("y_pred") == 4
    ledger.close()


def test_an_orphans_csv_from_before_late_joins_is_kept_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = ORPHAN_LOG_HEADER + "\n1.000001,y_true,151.0,1.0\n"
    (tmp_path / ORPHAN_LOG).write_text(old)  # halves an older release dropped from its state
    ledger, _ = opened(tmp_path)
    assert (tmp_path / RELEASED_ORPHAN_LOG).read_text() == old and not (tmp_path / ORPHAN_LOG).exists()
    assert RELEASED_ORPHAN_LOG in caplog.text
    ledger.close()
    (tmp_path / ORPHAN_LOG).write_text(ORPHAN_LOG_HEADER + "\n")  # written by this release from now on
    ledger, _ = opened(tmp_path)
    assert (tmp_path / RELEASED_ORPHAN_LOG).read_text() == old and (tmp_path / ORPHAN_LOG).exists()
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
