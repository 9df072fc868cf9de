"""metric_api's durable record: ``metric_log.csv`` (what users read) and the SQLite state
(held halves, written ids) that must agree with it, in one ``LOGS_DIR``.

Synchronous, and one call at a time: the service runs each call in a worker thread under
its lock. Every change is one SQLite transaction whose CSV append is fsynced before the
commit, so after a crash the state knows at most fewer rows than the CSV, never more;
``open()`` finds those rows and records them.

The state knows every row ever written, so the CSV is never less than it: a CSV deleted,
moved away (rotated) or truncated — while the service runs or while it is stopped — gets
its header and its missing rows back, in the order they were first written. Each batch
first checks that both files are still the ones being written (``changed()``); if not, it
raises ``LedgerFilesChanged`` and the service reopens the ledger, which repairs them.
"""

import logging
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.files import METRIC_LOG, METRIC_STATE, ORPHAN_LOG
from services.common.messages import LabelMessage, PredictionMessage
from services.common.metric_rows import ORPHAN_LOG_HEADER, MetricRow, Orphan, format_orphan
from services.metric_api.csvlog import MetricLog, MetricLogError, append_with_header
from services.metric_api.join import Conflict, Duplicate, Joined, Kind, LabelPredictionJoin
from services.metric_api.stats import LAST_5M_S, QualityStats, usable
from services.metric_api.store import SqliteHalfStore

log = logging.getLogger(__name__)

# What a ledger call raises when the disk (not the data) is the problem: full, read-only, gone.
StorageErrors = (OSError, MetricLogError, sqlite3.Error)
READ_CHUNK_ROWS = 10_000  # CSV rows folded into the statistics at a time at start-up


class LedgerFilesChanged(MetricLogError):
    """The CSV or the state file is no longer the one being written; reopening repairs it."""


@dataclass
class Recorded:
    """What one batch of halves made: the rows appended, which halves were refused and why."""

    rows: list[MetricRow] = field(default_factory=list)
    conflicts: list[tuple[int, str]] = field(default_factory=list)  # (index in the batch, reason)
    duplicates: int = 0


class MetricLedger:
    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir
        self.csv = MetricLog(logs_dir / METRIC_LOG)
        self.orphan_log = logs_dir / ORPHAN_LOG
        self._store: SqliteHalfStore | None = None
        self.orphans = 0
        self.dead_lettered = 0  # as saved in the state

    @property
    def store(self) -> SqliteHalfStore:
        if self._store is None:
            raise MetricLogError(f"{self.csv.path} is not open")
        return self._store

    def pending(self, kind: Kind) -> int:
        return self._store.held_count[kind] if self._store else 0

    def open(self, quality: QualityStats) -> None:
        """Open the CSV and the state, make the state agree with the CSV, and rebuild ``quality``:
        ``all`` and the windows from the CSV (the one full read), model versions and join
        times from the state. On failure nothing stays open and the ledger is as before."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._rescue_state()
        store = SqliteHalfStore(self.logs_dir / METRIC_STATE)
        try:
            try:
                self.csv.open_for_append()
                self._reconcile(store, quality)
            except LedgerFilesChanged:
                raise
            except MetricLogError as exc:
                # Not a metric log (no header, a line that is no row): a damaged copy of ours if the
                # state has written rows. Kept aside for the user, and made again from the state.
                if store.written_count() == 0:
                    raise
                aside = self.csv.set_aside("damaged")
                log.warning("%s; kept as %s, and %s is made again from the state", exc, aside, self.csv.path)
                quality.reset()
                self.csv.open_for_append()
                self._reconcile(store, quality)
        except BaseException:
            store.close()
            self.csv.close()
            raise
        if self._store is not None:
            self._store.close()
        self._store = store
        self.orphans = store.counter("orphans")
        self.dead_lettered = store.counter("dead_lettered")
        log.info("%s holds %d rows; %s halves wait for their partner", self.csv.path, quality.count, store.held_count)

    def changed(self) -> str | None:
        """How the CSV or the state file is no longer the one being written, or None."""
        if self._store is not None and (moved := self._store.moved()) is not None:
            return moved
        return self.csv.changed()

    def _rescue_state(self) -> None:
        """The state file deleted, moved away or replaced while open: SQLite went on writing the old
        file, so the open database is written back to the path before it is opened again, and
        every held half and written id is still known. Whatever else was there is kept aside."""
        if self._store is None or (moved := self._store.moved()) is None:
            return
        path = self._store.path
        copy = path.with_name(f".{path.name}.rescued")
        copy.unlink(missing_ok=True)
        self._store.save_copy(copy)
        self._store.close()
        self._store = None
        aside = f"replaced-{int(time.time())}"
        for suffix in ("", "-wal", "-shm"):
            found = path.with_name(path.name + suffix)
            if found.exists():
                found.replace(path.with_name(f"{path.name}.{aside}{suffix}"))
        copy.replace(path)
        log.warning("%s; wrote the database in use back to it", moved)

    def _reconcile(self, store: SqliteHalfStore, quality: QualityStats) -> None:
        """Record the CSV rows the state does not know (appended just before a crash, or a CSV
        replaced by hand), append those it lost (deleted, truncated, replaced), and feed every
        row to ``quality``."""
        known = store.counter("csv_rows")
        new_rows: list[MetricRow] = []
        chunk: list[MetricRow] = []
        newest_ids: deque[str] = deque(maxlen=quality.ring.capacity)
        count = 0
        for row in self.csv.rows():
            count += 1
            chunk.append(row)
            if usable(row.y_true, row.y_pred):  # the rows the statistics take: their times line up with them
                newest_ids.append(row.id)
            if count > known:
                new_rows.append(row)
            if len(chunk) == READ_CHUNK_ROWS:
                quality.add_history(chunk)
                chunk = []
        quality.add_history(chunk)
        with store.transaction():
            if count < known:
                # Rows the state wrote are missing from the file: they were acked and will never come
                # again, so they are written back from the state. Rows of the file the state does not
                # know (a file put there by hand) are recorded.
                store.record_rows_of_csv(self.csv.rows())
                restored = 0
                for missing in store.rows_missing_from(row.id for row in self.csv.rows()):
                    self.csv.append(missing)
                    quality.add_history(missing)
                    newest_ids.extend(row.id for row in missing if usable(row.y_true, row.y_pred))
                    restored += len(missing)
                count += restored
                log.warning(
                    "%s had %d of the %d rows written: the %d missing were written back from the state %s",
                    self.csv.path, count - restored, known, restored, store.path,
                )  # fmt: skip
            else:
                store.record_rows_of_csv(new_rows)
            store.set_counter("csv_rows", count)
        for version, y_true, y_pred in store.written_by_version():
            quality.add_version_rows(version, y_true, y_pred)
        quality.set_times_of_last(store.written_times(list(newest_ids), since=time.time() - LAST_5M_S))

    def record(self, halves: Sequence[tuple[Kind, LabelMessage | PredictionMessage]], now: float) -> Recorded:
        """One transaction: join every half, append the rows made (fsync), commit."""
        store = self.store
        if (changed := self.changed()) is not None:
            raise LedgerFilesChanged(changed)
        join = LabelPredictionJoin(store)
        recorded = Recorded()
        with store.transaction():
            for index, (kind, message) in enumerate(halves):
                outcome = join.add(
                    kind, message.id, message.body, now, ts=message.ts, model_version=getattr(message, "model_version", None)
                )
                if isinstance(outcome, Conflict):
                    recorded.conflicts.append((index, outcome.reason))
                elif isinstance(outcome, Joined):
                    recorded.rows.append(outcome.row)
                elif isinstance(outcome, Duplicate):
                    recorded.duplicates += 1
            if recorded.rows:
                self.csv.append(recorded.rows)
                store.add_to_counter("csv_rows", len(recorded.rows))
        return recorded

    def sweep_orphans(self, arrived_before: float) -> list[Orphan]:
        """Move halves held since before ``arrived_before`` to ``orphans.csv``; return them."""
        store = self.store
        # Look first: an empty sweep then costs no write transaction.
        expired = store.expired(arrived_before)
        if not expired:
            return []
        orphans = [Orphan(*held) for held in expired]
        with store.transaction():
            append_with_header(self.orphan_log, ORPHAN_LOG_HEADER, [format_orphan(orphan) for orphan in orphans])
            for sample_id, kind, _, _ in expired:
                store.release(sample_id, kind)
            store.add_to_counter("orphans", len(orphans))
        self.orphans += len(orphans)
        return orphans

    def count_dead_lettered(self, count: int) -> int:
        """Add ``count`` dead-lettered messages to the state's count; return the new total."""
        store = self.store
        with store.transaction():
            store.add_to_counter("dead_lettered", count)
        return store.counter("dead_lettered")

    def close(self) -> None:
        self.csv.close()
        if self._store is not None:
            self._store.close()
            self._store = None
