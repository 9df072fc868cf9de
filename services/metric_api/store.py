"""The metric service's durable state: held halves and written ids, in SQLite.

A half is acked as soon as it is committed here, so nothing waits unacked for its
partner (no prefetch window to fill, no broker consumer timeout), and a crash loses
nothing. Memory stays flat however many ids go by: the state is on disk.

The CSV is the record users read; this database must agree with it. ``csv_rows`` counts
the CSV rows the database knows of, updated in the same transaction that records them,
so after a crash between appending rows and committing, the service can tell which
rows are new to the database and record them (see MetricService._open).

Bounded by policy (docs/guarantees.md, "How long the state remembers"): a half waiting longer than
HALF_RETENTION_S leaves ``held`` for the archive (``expire``), its id kept in ``expired`` so that a
late partner is told apart for another HALF_RETENTION_S; a written id is forgotten
WRITTEN_HORIZON_S after it was written (``forget_before``).

A held prediction keeps its estimated error (issue 24) until its label comes. Beside each
written id it keeps what the CSV has no column for: the model version that made the
prediction (as a small code into ``versions``), when the row was joined, so
the per-version and time-window statistics can be rebuilt at start-up, and its ``line``:
the order rows were written in, so a CSV that lost rows is made whole in its own order.
For segments and the error by prediction time (services/metric_api/segments.py, by_time.py) a
held prediction and a written row keep their segment tags (as a small code into ``tagsets``,
the JSON of the tags once per distinct set) and a written row when its prediction was made
(``predicted_at``): both are rebuilt from here at start-up (with a snapshot, those of the rows past it).
"""

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from services.common.files import identity, still_there
from services.common.messages import UNKNOWN_VERSION
from services.common.metric_rows import MetricRow
from services.metric_api.join import HeldHalf, Kind

SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    id TEXT NOT NULL, kind TEXT NOT NULL, value REAL NOT NULL, arrived_at REAL NOT NULL,
    ts REAL, model_version TEXT, estimate REAL,
    PRIMARY KEY (id, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS held_by_age ON held (arrived_at);
CREATE TABLE IF NOT EXISTS written (
    id TEXT PRIMARY KEY, y_true REAL NOT NULL, y_pred REAL NOT NULL, version INTEGER, written_at REAL, line INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tagsets (code INTEGER PRIMARY KEY, tags TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS expired (
    id TEXT NOT NULL, kind TEXT NOT NULL, expired_at REAL NOT NULL, PRIMARY KEY (id, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS expired_by_time ON expired (expired_at);
"""
# Made after the columns are added (a state file from before has no written_at until then).
INDEXES = "CREATE INDEX IF NOT EXISTS written_by_time ON written (written_at);"
# Columns added after the first release: a state file from then gets them at start-up.
ADDED_COLUMNS = {
    "held": {"ts": "REAL", "model_version": "TEXT", "tagset": "INTEGER", "estimate": "REAL"},
    "written": {"version": "INTEGER", "written_at": "REAL", "line": "INTEGER", "tagset": "INTEGER", "predicted_at": "REAL"},
}


class StateFileError(sqlite3.Error):
    """The state file cannot be opened; the message names it and the operating system's reason."""


def _connect(path: Path) -> sqlite3.Connection:
    """The state database at ``path``; SQLite's own message ("unable to open database file")
    names neither the file nor the cause, so a refusal is told again with both."""
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        raise StateFileError(f"cannot open the state {path}: {exc} ({_why_not_writable(path)})") from exc
    return db


def _why_not_writable(path: Path) -> str:
    """What the operating system says to the writes SQLite needs: the file, and files beside it."""
    try:
        with path.open("ab"):
            pass
        probe = path.with_name(f".{path.name}.probe")
        with probe.open("wb"):
            pass
        probe.unlink()
    except OSError as exc:
        return str(exc)
    return "the file and its folder look writable"


class SqliteHalfStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _connect(path)
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we ack
        self._db.executescript(SCHEMA)
        for table, columns in ADDED_COLUMNS.items():
            present = {column[1] for column in self._db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in present:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        self._db.executescript(INDEXES)
        self._version_codes: dict[str, int] = {}
        self._load_versions()
        self._load_tagsets()
        self._count_held()
        self._load_last_line()
        self._identity = identity(path.stat())

    def _load_last_line(self) -> None:
        # Never below the first line of the current CSV file (csv_first_line, set when metric_log.csv was
        # rotated): its rows are told from those of the rotated files by their line, even after every
        # written id was forgotten.
        self._last_line: int = self._db.execute(
            "SELECT max(coalesce((SELECT max(line) FROM written), 0), "
            "coalesce((SELECT value FROM counters WHERE name = 'csv_first_line'), 1) - 1)"
        ).fetchone()[0]

    def next_line(self) -> int:
        """The line the next row recorded gets."""
        return self._last_line + 1

    def moved(self) -> str | None:
        """How the file at ``path`` is no longer this database (deleted, moved away, replaced), or None."""
        return still_there(self.path, self._identity)[1]

    def save_copy(self, path: Path) -> None:
        """Write this database, as this connection sees it, to ``path`` (which must not exist)."""
        self._db.execute("VACUUM INTO ?", (str(path),))

    def _count_held(self) -> None:
        self.held_count: dict[str, int] = {"y_true": 0, "y_pred": 0}
        self.held_count.update(self._db.execute("SELECT kind, count(*) FROM held GROUP BY kind"))

    # -- transactions: the service wraps each batch in one
    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
            self._load_versions()
            self._load_tagsets()
            self._count_held()
            self._load_last_line()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN; COMMIT if the block succeeds, ROLLBACK (and re-raise) if it fails."""
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def close(self) -> None:
        self._db.close()

    # -- HalfStore
    def written(self, sample_id: str) -> MetricRow | None:
        found = self._db.execute("SELECT y_true, y_pred FROM written WHERE id = ?", (sample_id,)).fetchone()
        return MetricRow.of(sample_id, *found) if found else None

    def held(self, sample_id: str, kind: Kind) -> float | None:
        found = self._db.execute("SELECT value FROM held WHERE id = ? AND kind = ?", (sample_id, kind)).fetchone()
        return found[0] if found else None

    def held_half(self, sample_id: str, kind: Kind) -> HeldHalf | None:
        found = self._db.execute(
            "SELECT value, arrived_at, ts, model_version, tagset, estimate FROM held WHERE id = ? AND kind = ?",
            (sample_id, kind),
        ).fetchone()
        return HeldHalf(found[0], found[1], found[2], found[3], self._tags_of(found[4]), found[5]) if found else None

    def held_halves(self, sample_id: str) -> dict[Kind, HeldHalf]:
        found = self._db.execute(
            "SELECT kind, value, arrived_at, ts, model_version, tagset, estimate FROM held WHERE id = ?", (sample_id,)
        ).fetchall()
        return {
            kind: HeldHalf(value, at, ts, version, self._tags_of(code), estimate)
            for kind, value, at, ts, version, code, estimate in found
        }

    def hold(self, sample_id: str, kind: Kind, half: HeldHalf) -> None:
        self._db.execute(
            "INSERT INTO held (id, kind, value, arrived_at, ts, model_version, tagset, estimate) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sample_id,
                kind,
                half.value,
                half.arrived_at,
                half.ts,
                half.model_version,
                self._tagset_code(half.tags),
                half.estimate,
            ),
        )
        self.held_count[kind] += 1

    def release(self, sample_id: str, kind: Kind) -> None:
        if self._db.execute("DELETE FROM held WHERE id = ? AND kind = ?", (sample_id, kind)).rowcount:
            self.held_count[kind] -= 1

    def record_written(self, row: MetricRow, written_at: float | None = None) -> None:
        """Record a row; rows are numbered in the order they are recorded, which is the CSV's."""
        self._last_line += 1
        self._db.execute(
            "INSERT OR IGNORE INTO written (id, y_true, y_pred, version, written_at, line, tagset, predicted_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.y_true,
                row.y_pred,
                self._version_code(row.model_version),
                written_at,
                self._last_line,
                self._tagset_code(row.tags),
                row.predicted_at,
            ),
        )

    # -- segment tags, as small codes
    def _load_tagsets(self) -> None:
        self._tagset_codes: dict[str, int] = {text: code for code, text in self._db.execute("SELECT code, tags FROM tagsets")}
        self._tagsets: dict[int, dict[str, str]] = {code: json.loads(text) for text, code in self._tagset_codes.items()}
        self._tagset_by_items: dict[tuple[tuple[str, str], ...], int] = {
            tuple(sorted(tags.items())): code for code, tags in self._tagsets.items()
        }

    def _tagset_code(self, tags: dict[str, str] | None) -> int | None:
        if not tags:
            return None
        items = tuple(sorted(tags.items()))
        code = self._tagset_by_items.get(items)
        if code is None:
            text = json.dumps(dict(items), separators=(",", ":"))
            code = self._tagset_codes.get(text)
            if code is None:
                code = self._db.execute("INSERT INTO tagsets (tags) VALUES (?)", (text,)).lastrowid
                assert code is not None
                self._tagset_codes[text] = code
                self._tagsets[code] = dict(items)
            self._tagset_by_items[items] = code
        return code

    def _tags_of(self, code: int | None) -> dict[str, str] | None:
        return None if code is None else self._tagsets.get(code)

    def written_for_segments(self, chunk: int = 50_000) -> Iterator[list[MetricRow]]:
        """Every written row with tags or a prediction time, in the order written, in chunks: the
        segments and the buckets by prediction time are rebuilt from them at start-up."""
        cursor = self._db.execute(
            "SELECT id, y_true, y_pred, tagset, predicted_at FROM written "
            "WHERE tagset IS NOT NULL OR predicted_at IS NOT NULL ORDER BY line, written_at, id"
        )
        while found := cursor.fetchmany(chunk):
            yield [
                MetricRow.of(sample_id, t, p, predicted_at=at, tags=self._tags_of(code)) for sample_id, t, p, code, at in found
            ]

    def written_for_segments_of(self, ids: Sequence[str], chunk: int = 500) -> list[MetricRow]:
        """The written rows of ``ids`` (in that order) that have tags or a prediction time: the rows
        past a snapshot, for the segments and the buckets by prediction time."""
        found: dict[str, MetricRow] = {}
        for start in range(0, len(ids), chunk):
            part = list(ids[start : start + chunk])
            query = (
                "SELECT id, y_true, y_pred, tagset, predicted_at FROM written "  # noqa: S608 - only "?" marks; the ids are bound
                f"WHERE id IN ({','.join('?' * len(part))}) AND (tagset IS NOT NULL OR predicted_at IS NOT NULL)"
            )
            for sample_id, t, p, code, at in self._db.execute(query, part):
                found[sample_id] = MetricRow.of(sample_id, t, p, predicted_at=at, tags=self._tags_of(code))
        return [row for sample_id in ids if (row := found.get(sample_id)) is not None]

    def held_prediction_times(self, since: float) -> Iterator[float]:
        """When each waiting prediction made at or after ``since`` was made (its ts, else when it came)."""
        cursor = self._db.execute(
            "SELECT coalesce(ts, arrived_at) AS at FROM held WHERE kind = 'y_pred' AND coalesce(ts, arrived_at) >= ?",
            (since,),
        )
        while found := cursor.fetchmany(10_000):
            for (at,) in found:
                yield at

    # -- model versions, as small codes
    def _load_versions(self) -> None:
        self._version_codes = {name: code for code, name in self._db.execute("SELECT code, name FROM versions")}

    def _version_code(self, name: str | None) -> int | None:
        if name is None:
            return None
        code = self._version_codes.get(name)
        if code is None:
            code = self._db.execute("INSERT INTO versions (name) VALUES (?)", (name,)).lastrowid
            assert code is not None
            self._version_codes[name] = code
        return code

    def written_by_version(self, chunk: int = 50_000) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Every written row's y_true and y_pred, by model version, in chunks, in no set order."""
        names = {code: name for name, code in self._version_codes.items()}
        cursor = self._db.execute("SELECT coalesce(version, -1), y_true, y_pred FROM written")
        while rows := cursor.fetchmany(chunk):
            codes, y_true, y_pred = np.array(rows, dtype=float).T
            for code in np.unique(codes):
                mine = codes == code
                yield names.get(int(code), UNKNOWN_VERSION), y_true[mine], y_pred[mine]

    def versions_of(self, ids: Sequence[str], chunk: int = 500) -> list[str]:
        """The model version of each of ``ids`` (UNKNOWN_VERSION where not recorded)."""
        names = {code: name for name, code in self._version_codes.items()}
        found: dict[str, int | None] = {}
        for start in range(0, len(ids), chunk):
            part = list(ids[start : start + chunk])
            query = f"SELECT id, version FROM written WHERE id IN ({','.join('?' * len(part))})"  # noqa: S608 - only "?" marks
            found.update(self._db.execute(query, part).fetchall())
        return [names.get(code, UNKNOWN_VERSION) if (code := found.get(i)) is not None else UNKNOWN_VERSION for i in ids]

    def written_times(self, ids: Sequence[str], since: float, chunk: int = 500) -> list[float | None]:
        """When the rows of the newest of ``ids`` (oldest first) were joined (None: not recorded):
        read back from the newest in chunks, stopping after the first chunk all before ``since``."""
        chunks: list[list[float | None]] = []
        end = len(ids)
        while end > 0:
            part = [ids[i] for i in range(max(0, end - chunk), end)]
            marks = ",".join("?" * len(part))
            query = f"SELECT id, written_at FROM written WHERE id IN ({marks})"  # noqa: S608 - only "?" marks; the ids are bound
            found = dict(self._db.execute(query, part).fetchall())
            times = [found.get(sample_id) for sample_id in part]
            chunks.append(times)
            if all(t is None or t < since for t in times):
                break
            end -= len(part)
        return [t for times in reversed(chunks) for t in times]

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
        self._last_line = 0

    def written_count(self) -> int:
        count: int = self._db.execute("SELECT count(*) FROM written").fetchone()[0]
        return count

    def rows_missing_from(self, present: Iterable[str], from_line: int = 0, chunk: int = 10_000) -> Iterator[list[MetricRow]]:
        """The written rows whose id is not among ``present`` (the ids a CSV holds), in the order
        they were written (rows from before lines were numbered first, by join time), in chunks;
        with ``from_line``, only the rows recorded at or after that line (those of the current file,
        after a rotation). Within a transaction: the ids go through a temporary table, not memory."""
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS present (id TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("DELETE FROM present")
        self._db.executemany("INSERT OR IGNORE INTO present (id) VALUES (?)", ((sample_id,) for sample_id in present))
        since = "AND line >= ? " if from_line > 0 else ""
        cursor = self._db.execute(
            f"SELECT id, y_true, y_pred FROM written WHERE id NOT IN (SELECT id FROM present) {since}"  # noqa: S608 - a fixed clause
            "ORDER BY line, written_at, id",
            (from_line,) if from_line > 0 else (),
        )
        while found := cursor.fetchmany(chunk):
            yield [MetricRow.of(*row) for row in found]
        self._db.execute("DELETE FROM present")

    def record_rows_of_csv(self, rows: Iterable[MetricRow]) -> None:
        """Record rows found in the CSV (after a crash, or a CSV replaced by hand)."""
        for found in rows:
            prediction = self.held_half(found.id, "y_pred")
            row = found
            if prediction is not None:  # its label came in the batch the crash cut short
                at = prediction.ts if prediction.ts is not None else prediction.arrived_at
                version, tags = prediction.model_version, prediction.tags
                row = MetricRow.of(
                    found.id, found.y_true, found.y_pred,
                    model_version=version, predicted_at=at, tags=tags, estimated_error=prediction.estimate,
                )  # fmt: skip
            self.record_written(row)
            self.release(row.id, "y_true")
            self.release(row.id, "y_pred")

    def held_before(self, arrived_before: float) -> Iterator[tuple[str, Kind, float, float]]:
        """Held halves that arrived before the given time, oldest first: (id, kind, value, arrived_at).
        A cursor, read as it goes: the orphans may be many."""
        cursor = self._db.execute(
            "SELECT id, kind, value, arrived_at FROM held WHERE arrived_at < ? ORDER BY arrived_at", (arrived_before,)
        )
        while found := cursor.fetchmany(1000):
            yield from found

    # -- the bounds: expiry of waiting halves, the horizon of written ids
    def held_oldest(self, arrived_before: float, limit: int) -> list[tuple[str, Kind, float, float, float | None]]:
        """Up to ``limit`` held halves that arrived before the given time, oldest first:
        (id, kind, value, arrived_at, ts)."""
        query = "SELECT id, kind, value, arrived_at, ts FROM held WHERE arrived_at < ? ORDER BY arrived_at LIMIT ?"
        return self._db.execute(query, (arrived_before, limit)).fetchall()

    def expire(self, halves: Sequence[tuple[str, Kind]], expired_at: float) -> None:
        """Move halves from ``held`` to ``expired`` (their ids only: the archive file has the rest)."""
        for sample_id, kind in halves:
            self.release(sample_id, kind)
        self._db.executemany(
            "INSERT OR REPLACE INTO expired (id, kind, expired_at) VALUES (?, ?, ?)",
            ((sample_id, kind, expired_at) for sample_id, kind in halves),
        )

    def expired_kinds(self, sample_id: str) -> set[Kind]:
        """The kinds of ``sample_id``'s halves that expired (within the horizon)."""
        return {kind for (kind,) in self._db.execute("SELECT kind FROM expired WHERE id = ?", (sample_id,))}

    def forget_before(self, written_before: float, expired_before: float, limit: int) -> int:
        """Forget up to ``limit`` ids written before ``written_before`` and up to ``limit`` expired
        before ``expired_before``; how many were forgotten. Rows recorded without a time (found in
        the CSV after a crash, or in a CSV put there by hand) stay."""
        forgotten: int = self._db.execute(
            "DELETE FROM written WHERE id IN (SELECT id FROM written WHERE written_at < ? LIMIT ?)", (written_before, limit)
        ).rowcount
        forgotten += self._db.execute(
            "DELETE FROM expired WHERE (id, kind) IN (SELECT id, kind FROM expired WHERE expired_at < ? LIMIT ?)",
            (expired_before, limit),
        ).rowcount
        return forgotten

    def count_held_since(self, times: Sequence[float]) -> dict[str, list[int]]:
        """Per kind: how many held halves there are in all, then how many arrived at or after each
        of ``times``. One pass over the index on arrival time (no table read)."""
        columns = ", ".join(["count(*)", *["sum(arrived_at >= ?)"] * len(times)])
        query = f"SELECT kind, {columns} FROM held GROUP BY kind"  # noqa: S608 - only "?" marks; the times are bound
        counts: dict[str, list[int]] = {"y_true": [0] * (len(times) + 1), "y_pred": [0] * (len(times) + 1)}
        for kind, *found in self._db.execute(query, list(times)):
            counts[kind] = [int(n or 0) for n in found]
        return counts
