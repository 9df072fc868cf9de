"""The metric service's durable state: held halves and written ids, in SQLite.

A half is acked as soon as it is committed here, so nothing waits unacked for its
partner (no prefetch window to fill, no broker consumer timeout), and a crash loses
nothing. Memory stays flat however many ids go by: the state is on disk.

The CSV is the record users read; this database must agree with it. ``csv_rows`` counts
the CSV rows the database knows of, updated in the same transaction that records them,
so after a crash between appending rows and committing, the service can tell which
rows are new to the database and record them (see MetricService._open).
"""

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from services.metric_api.join import Kind, MetricRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    id TEXT NOT NULL, kind TEXT NOT NULL, value REAL NOT NULL, arrived_at REAL NOT NULL,
    PRIMARY KEY (id, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS held_by_age ON held (arrived_at);
CREATE TABLE IF NOT EXISTS written (
    id TEXT PRIMARY KEY, y_true REAL NOT NULL, y_pred REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""


class SqliteHalfStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we ack
        self._db.executescript(SCHEMA)
        self.held_count: dict[str, int] = {"y_true": 0, "y_pred": 0}
        for kind, count in self._db.execute("SELECT kind, count(*) FROM held GROUP BY kind"):
            self.held_count[kind] = count

    # -- transactions: the service wraps each batch in one
    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
            self.held_count = dict.fromkeys(self.held_count, 0)
            for kind, count in self._db.execute("SELECT kind, count(*) FROM held GROUP BY kind"):
                self.held_count[kind] = count

    def close(self) -> None:
        self._db.close()

    # -- HalfStore
    def written(self, sample_id: str) -> MetricRow | None:
        found = self._db.execute("SELECT y_true, y_pred FROM written WHERE id = ?", (sample_id,)).fetchone()
        return MetricRow.of(sample_id, *found) if found else None

    def held(self, sample_id: str, kind: Kind) -> float | None:
        found = self._db.execute("SELECT value FROM held WHERE id = ? AND kind = ?", (sample_id, kind)).fetchone()
        return found[0] if found else None

    def hold(self, sample_id: str, kind: Kind, value: float, arrived_at: float) -> None:
        self._db.execute("INSERT INTO held VALUES (?, ?, ?, ?)", (sample_id, kind, value, arrived_at))
        self.held_count[kind] += 1

    def release(self, sample_id: str, kind: Kind) -> None:
        if self._db.execute("DELETE FROM held WHERE id = ? AND kind = ?", (sample_id, kind)).rowcount:
            self.held_count[kind] -= 1

    def record_written(self, row: MetricRow) -> None:
        self._db.execute("INSERT OR IGNORE INTO written VALUES (?, ?, ?)", (row.id, row.y_true, row.y_pred))

    # -- keeping up with the CSV
    def counter(self, name: str) -> int:
        found = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return found[0] if found else 0

    def add_to_counter(self, name: str, amount: int) -> None:
        self._db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, amount),
        )

    def set_counter(self, name: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (name, value))

    def forget_written(self) -> None:
        self._db.execute("DELETE FROM written")

    def record_rows_of_csv(self, rows: Iterable[MetricRow]) -> None:
        """Record rows found in the CSV (after a crash, or a CSV replaced by hand)."""
        for row in rows:
            self.record_written(row)
            self.release(row.id, "y_true")
            self.release(row.id, "y_pred")

    def expired(self, arrived_before: float) -> list[tuple[str, str, float, float]]:
        """Held halves that arrived before the given time: (id, kind, value, arrived_at)."""
        return self._db.execute(
            "SELECT id, kind, value, arrived_at FROM held WHERE arrived_at < ? ORDER BY arrived_at", (arrived_before,)
        ).fetchall()
