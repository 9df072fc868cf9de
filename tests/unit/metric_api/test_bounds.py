"""The state bounded by policy: halves waiting past HALF_RETENTION_S leave for expired_halves.log
(counted, a late partner refused with the reason, never a row), and written ids are forgotten past
WRITTEN_HORIZON_S (docs/guarantees.md, "How long the state remembers")."""

import sqlite3
from pathlib import Path

from services.common.files import EXPIRED_LOG, METRIC_LOG, METRIC_STATE
from services.metric_api.ledger import EXPIRED_LOG_HEADER, MetricLedger
from services.metric_api.stats import QualityStats
from tests.unit.metric_api.test_ledger import csv_rows, halves, sid


def ledger_at(logs: Path, now: float, retention: float = 100.0, horizon: float = 1000.0) -> MetricLedger:
    ledger = MetricLedger(logs, orphan_ttl_s=10.0, half_retention_s=retention, written_horizon_s=horizon)
    ledger.open(QualityStats(None), now=now)
    return ledger


def archive(logs: Path, name: str = EXPIRED_LOG) -> list[list[str]]:
    lines = (logs / name).read_text().splitlines()
    assert lines[0] == EXPIRED_LOG_HEADER
    return [line.split(",") for line in lines[1:]]


def held_rows(logs: Path) -> int:
    with sqlite3.connect(logs / METRIC_STATE) as db:
        return int(db.execute("SELECT count(*) FROM held").fetchone()[0])


def test_a_half_waiting_past_the_retention_is_archived_counted_and_leaves_the_state(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path, now=0.0)
    ledger.record(halves(("y_pred", 1, 90.0), ("y_true", 2, 151.0)), now=10.0)
    ledger.record(halves(("y_pred", 3, 80.0)), now=60.0)
    assert sum(ledger.expire(now=105.0).values()) == 0  # none has waited 100 s yet

    assert ledger.expire(now=111.0) == {"y_true": 1, "y_pred": 1}
    assert [(f[0], f[1], float(f[2]), float(f[5])) for f in archive(tmp_path)] == [
        (sid(1), "y_pred", 90.0, 111.0),
        (sid(2), "y_true", 151.0, 111.0),
    ]
    assert ledger.expired == 2 and ledger.waiting_halves("y_pred") == 1 and held_rows(tmp_path) == 1
    ledger.close()

    ledger = ledger_at(tmp_path, now=112.0)
    assert ledger.expired == 2  # counted in the state, across restarts
    ledger.close()


def test_a_partner_after_its_half_expired_is_refused_with_the_reason_and_makes_no_row(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path, now=0.0)
    ledger.record(halves(("y_pred", 1, 90.0)), now=0.0)
    ledger.expire(now=200.0)

    late = ledger.record(halves(("y_true", 1, 100.0), ("y_pred", 1, 90.0)), now=300.0)
    assert late.rows == [] and late.duplicates == 1  # the prediction again: a redelivery of what was archived
    [(index, reason)] = late.conflicts
    assert index == 0 and "expired" in reason and "HALF_RETENTION_S" in reason
    assert not (tmp_path / METRIC_LOG).read_text().splitlines()[1:]  # no row, not now nor later
    assert ledger.waiting_halves("y_true") == 0  # the late label is not held either
    ledger.close()


def test_ids_older_than_the_horizon_are_forgotten_and_younger_ones_still_count_as_duplicates(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path, now=0.0)
    ledger.record(halves(("y_true", 1, 100.0), ("y_pred", 1, 90.0)), now=10.0)
    ledger.record(halves(("y_true", 2, 100.0), ("y_pred", 2, 90.0)), now=500.0)
    ledger.record(halves(("y_pred", 3, 90.0)), now=10.0)
    ledger.expire(now=200.0)

    assert ledger.record(halves(("y_true", 3, 100.0)), now=290.0).conflicts  # its prediction's expiry is known
    assert ledger.forget(now=299.0) == 0
    assert ledger.forget(now=301.0) == 1  # id 3's expiry, HALF_RETENTION_S after it
    assert not ledger.record(halves(("y_true", 3, 100.0)), now=301.0).conflicts  # now held as new
    assert ledger.forget(now=1020.0) == 1  # id 1, written at 10 s; id 2 (written at 500 s) stays
    assert ledger.record(halves(("y_true", 2, 100.0)), now=1030.0).duplicates == 1  # within the horizon
    # Past the horizon the id is unknown: its half is held as new (and expires in its turn), never a second row.
    again = ledger.record(halves(("y_true", 1, 100.0)), now=1030.0)
    assert again.rows == [] and not again.conflicts and ledger.waiting_halves("y_true") == 2
    assert [row.id for row in csv_rows(tmp_path)] == [sid(1), sid(2)]
    ledger.close()


def test_the_archive_is_rotated_by_size_and_no_line_is_lost(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path, now=0.0)
    ledger.expired_log_max_bytes = 200
    for n in range(1, 21):
        ledger.record(halves(("y_pred", n, 90.0)), now=float(n))
        ledger.expire(now=n + 101.0)
    files = sorted(tmp_path.glob("expired_halves*.log"))
    assert len(files) > 1
    ids = sorted(line[0] for path in files for line in archive(tmp_path, path.name))
    assert ids == [sid(n) for n in range(1, 21)]
    ledger.close()
