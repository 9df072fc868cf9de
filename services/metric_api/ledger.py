"""metric_api's durable record: ``metric_log.csv`` (what users read) and the SQLite state
(held halves, written ids) that must agree with it, in one ``LOGS_DIR``.

Synchronous, and one call at a time: the service runs each call in a worker thread under
its lock. Every change is one SQLite transaction whose CSV append is fsynced before the
commit, so after a crash the state knows at most fewer rows than the CSV, never more;
``open()`` finds those rows and records them.

Orphans: a half waits in the state until its partner comes, however long that takes.
``ORPHAN_TTL_S`` only says when a waiting half is *counted* missing: ``survey()`` counts the
halves older than that (and the waiting halves by age), and ``orphans.csv`` lists exactly
those, rewritten when the list changed. A partner that comes later makes the row as any
other would (exactly once: the id is then written) and takes its half off the list.

Expiry and the horizon (docs/guarantees.md, "How long the state remembers"): ``expire()`` moves
the halves that waited longer than HALF_RETENTION_S to ``expired_halves.log`` (appended and
fsynced before the state forgets them: a crash between repeats a line, never loses one) and
counts them; ``forget()`` drops the written ids older than WRITTEN_HORIZON_S, and the ids of halves
expired more than HALF_RETENTION_S ago (a partner so late is held as new, and expires in its turn).

Rotation (METRIC_LOG_MAX_BYTES; docs/guarantees.md, "Rotation by size"): after a batch is durable, a
metric_log.csv over the limit is renamed ``metric_log.<generation>.csv`` and a new one begun with the
header; the state's ``csv_generation`` then goes up and ``csv_rows`` starts again from 0, and
``csv_first_line`` marks the first row of the new file. A crash between the rename and that commit is
finished at start-up (the rotated file of the state's generation exists: it is whole). The statistics
go on across files; a full read takes the rotated files still there, oldest first, then the current.

The state knows every row written within the horizon, so the CSV is never less than it: a CSV deleted,
moved away (rotated) or truncated — while the service runs or while it is stopped — gets
its header and its missing rows back, in the order they were first written. Each batch
first checks that both files are still the ones being written (``changed()``); if not, it
raises ``LedgerFilesChanged`` and the service reopens the ledger, which repairs them.
"""

import logging
import math
import sqlite3
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common import files
from services.common.error_window import usable
from services.common.files import (
    METRIC_LOG,
    METRIC_STATE,
    ORPHAN_LOG,
    RELEASED_ORPHAN_LOG,
    atomic_write_chunks,
    rotated_metric_log,
    rotated_metric_logs,
)
from services.common.messages import UNKNOWN_VERSION, LabelMessage, PredictionMessage
from services.common.metric_rows import ORPHAN_LOG_HEADER, MetricRow, Orphan, format_orphan
from services.common.row_windows import LAST_5M_S
from services.common.snapshots import Snapshot, SnapshotUnusable, fingerprint, read_snapshot, write_snapshot
from services.metric_api.csvlog import MetricLog, MetricLogError, append_with_header, read_rows
from services.metric_api.join import Conflict, Duplicate, Held, Joined, Kind, LabelPredictionJoin
from services.metric_api.stats import QualityStats
from services.metric_api.store import SqliteHalfStore
from services.metric_api.where_when import SegmentedStats

log = logging.getLogger(__name__)

# What a ledger call raises when the disk (not the data) is the problem: full, read-only, gone.
StorageErrors = (OSError, MetricLogError, sqlite3.Error)
READ_CHUNK_ROWS = 10_000  # CSV rows folded into the statistics at a time at start-up
KINDS: tuple[Kind, Kind] = ("y_true", "y_pred")
# The waiting halves are counted by age in these buckets: (name, upper bound in seconds).
AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("<10s", 10.0), ("10s-1m", 60.0), ("1m-10m", 600.0), ("10m-1h", 3600.0), ("1h-1d", 86400.0), (">1d", math.inf),
)  # fmt: skip
ORPHAN_LINES_PER_WRITE = 1000
EXPIRED_LOG_HEADER = "id,kind,value,arrived_at,ts,expired_at"
EXPIRED_LOG_MAX_BYTES = 64 << 20  # then expired_halves.log is renamed (with the time) and a new one begun
SNAPSHOT_VERSION = 1  # of metric_state.snapshot's content; another is read as no snapshot (the full read)
SWEEP_CHUNK = 10_000  # halves expired / ids forgotten per transaction: the batches wait no longer than that


class LedgerFilesChanged(MetricLogError):
    """The CSV or the state file is no longer the one being written; reopening repairs it."""


@dataclass
class Recorded:
    """What one batch of halves made: the rows appended, which halves were refused and why."""

    rows: list[MetricRow] = field(default_factory=list)
    conflicts: list[tuple[int, str]] = field(default_factory=list)  # (index in the batch, reason)
    duplicates: int = 0
    late_joins: int = 0  # rows whose first half had been counted an orphan
    predicted_at: list[float] = field(default_factory=list)  # when each new prediction (held or joined) was made
    # Each prediction seen for the first time (held or joined): its model version and estimated error.
    predictions: list[tuple[str, float | None]] = field(default_factory=list)
    rotated: Path | None = None  # metric_log.csv, full after this batch, renamed to this


@dataclass
class Survey:
    """What one look at the waiting halves found."""

    newly_orphaned: dict[Kind, int]  # halves that passed ORPHAN_TTL_S since the last look
    listed: int | None = None  # orphans written to orphans.csv, when it was rewritten


def no_waiting() -> dict[str, dict[str, int]]:
    return {kind: dict.fromkeys((name for name, _ in AGE_BUCKETS), 0) for kind in KINDS}


class MetricLedger:
    def __init__(
        self,
        logs_dir: Path,
        orphan_ttl_s: float = 3600.0,
        half_retention_s: float = math.inf,
        written_horizon_s: float = math.inf,
        segment_keys: tuple[str, ...] = (),
        log_max_bytes: int = 0,
    ) -> None:
        self.logs_dir = logs_dir
        self.log_max_bytes = log_max_bytes  # METRIC_LOG_MAX_BYTES: 0 never rotates
        self.generation = 1  # of metric_log.csv (the state's csv_generation, as of the last open or rotation)
        self.rotations = 0  # by this process
        self._rotation_problem: str | None = None  # a rotation failed halfway: reopening finishes or undoes it
        self.segment_keys = segment_keys  # the tags a prediction keeps with it in the state (SEGMENT_KEYS)
        self.orphan_ttl_s = orphan_ttl_s
        self.half_retention_s = half_retention_s
        self.written_horizon_s = written_horizon_s
        self.expired_log = logs_dir / files.EXPIRED_LOG
        self.snapshot_path = logs_dir / files.METRIC_SNAPSHOT
        self.expired_log_max_bytes = EXPIRED_LOG_MAX_BYTES
        self.expired = 0  # halves expired since the state began (saved in it)
        self.csv = MetricLog(logs_dir / METRIC_LOG)
        self.orphan_log = logs_dir / ORPHAN_LOG
        self._store: SqliteHalfStore | None = None
        # As of the last survey (and the joins since): waiting halves counted missing, by kind,
        # and every waiting half by age.
        self.orphans_by_kind: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        self.waiting = no_waiting()
        self.late_joins = 0
        self._orphan_cutoff = -math.inf  # halves that arrived before it are counted orphans
        self._orphan_list_stale = False
        self.dead_lettered = 0  # as saved in the state

    @property
    def orphans(self) -> int:
        return sum(self.orphans_by_kind.values())

    @property
    def store(self) -> SqliteHalfStore:
        if self._store is None:
            raise MetricLogError(f"{self.csv.path} is not open")
        return self._store

    def waiting_halves(self, kind: Kind) -> int:
        """Halves of ``kind`` waiting for their partner, orphans included."""
        return self._store.held_count[kind] if self._store else 0

    def pending(self, kind: Kind) -> int:
        """Halves of ``kind`` waiting for their partner and not (yet) counted orphans."""
        return max(0, self.waiting_halves(kind) - self.orphans_by_kind[kind])

    def open(self, quality: QualityStats, now: float | None = None) -> None:
        """Open the CSV and the state, make the state agree with the CSV, and rebuild ``quality``:
        ``all`` and the windows from the CSV (the one full read), model versions and join
        times from the state; count the waiting halves. On failure nothing stays open and the
        ledger is as before. ``now`` is the time it is (time.time() when not given)."""
        now = time.time() if now is None else now
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._rescue_state()
        store = SqliteHalfStore(self.logs_dir / METRIC_STATE)
        try:
            try:
                self._rotation_problem = None
                self._finish_rotation(store)
                self.csv.open_for_append()
                self._reconcile(store, quality, now)
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
                self._reconcile(store, quality, now)
        except BaseException:
            store.close()
            self.csv.close()
            raise
        if self._store is not None:
            self._store.close()
        self._store = store
        self.late_joins = store.counter("late_joins")
        self.dead_lettered = store.counter("dead_lettered")
        self.expired = store.counter("expired")
        self._set_aside_released_orphans(store)
        self._orphan_cutoff = -math.inf
        self.survey(now)
        log.info(
            "%s holds %d rows; %s halves wait for their partner, %d of them orphans (over ORPHAN_TTL_S=%gs)",
            self.csv.path, quality.count, store.held_count, self.orphans, self.orphan_ttl_s,
        )  # fmt: skip

    def _set_aside_released_orphans(self, store: SqliteHalfStore) -> None:
        """An orphans.csv from before late joins lists halves that were dropped from the state:
        the list rewritten from the state would lose them, so that file is kept under another name."""
        if store.counter("orphan_list") or not self.orphan_log.exists():
            return
        aside = self.logs_dir / RELEASED_ORPHAN_LOG
        self.orphan_log.replace(aside)
        log.warning(
            "%s was written by a release that dropped orphans from the state: moved to %s; "
            "from now on %s lists the halves still waiting past ORPHAN_TTL_S", self.orphan_log, aside, self.orphan_log.name
        )  # fmt: skip
        with store.transaction():
            store.set_counter("orphan_list", 1)

    def changed(self) -> str | None:
        """How the CSV or the state file is no longer the one being written, or None."""
        if self._rotation_problem is not None:
            return self._rotation_problem
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

    def _reconcile(self, store: SqliteHalfStore, quality: QualityStats, now: float, *, snapshot: bool = True) -> None:
        """Record the CSV rows the state does not know (appended just before a crash, or a CSV
        replaced by hand), append those it lost (deleted, truncated, replaced), and feed every
        row to ``quality``: from the snapshot and the CSV's tail past it when the snapshot fits
        the files, else from every file (the rotated ones still there, oldest first, then the current)."""
        known = store.counter("csv_rows")
        start = self._load_snapshot(quality, known) if snapshot else None
        from_snapshot = start is not None
        covered = start[2] if start is not None else 0
        count = 0  # rows of the current file
        new_rows: list[MetricRow] = []
        tail: list[MetricRow] = []  # the rows read past a snapshot: their model versions come from the state
        chunk: list[MetricRow] = []
        newest_ids: deque[str] = deque(maxlen=quality.ring.capacity)
        for path, offset, current in self._files_from(start):
            if current:
                count = covered if start is not None and start[0] == self.generation else 0
            for row in read_rows(path, offset) if current else self._rotated_rows(path, offset):
                chunk.append(row)
                if usable(row.y_true, row.y_pred):  # the rows the statistics take: their times line up with them
                    newest_ids.append(row.id)
                if from_snapshot:
                    tail.append(row)
                if current:
                    count += 1
                    if count > known:
                        new_rows.append(row)
                if len(chunk) == READ_CHUNK_ROWS:
                    quality.add_history(chunk)
                    chunk = []
        quality.add_history(chunk)
        if from_snapshot and count < known:
            log.warning("%s has fewer rows than the state wrote: reading it whole", self.csv.path)
            quality.reset()
            self._reconcile(store, quality, now, snapshot=False)
            return
        with store.transaction():
            if count < known:
                # Rows the state wrote are missing from the file: they were acked and will never come
                # again, so they are written back from the state (those of this file: the rotated files'
                # are in them). Rows of the file the state does not know (a file put there by hand) are recorded.
                store.record_rows_of_csv(self.csv.rows())
                restored = 0
                first_line = store.counter("csv_first_line")
                for missing in store.rows_missing_from((row.id for row in self.csv.rows()), first_line):
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
        if from_snapshot:
            log.info("started from %s; read the %d rows past it, to the end of %s", self.snapshot_path, len(tail), self.csv.path)
            for start_at in range(0, len(tail), READ_CHUNK_ROWS):
                quality.add_rows_of_versions(tail[start_at : start_at + READ_CHUNK_ROWS], store.versions_of)
        else:
            for version, y_true, y_pred in store.written_by_version():
                quality.add_version_rows(version, y_true, y_pred)
        if isinstance(quality, SegmentedStats):  # the segments and the buckets by prediction time
            if from_snapshot and quality.where_when_loaded:  # the snapshot's, and the state's rows of the tail
                for start_at in range(0, len(tail), READ_CHUNK_ROWS):
                    ids = [row.id for row in tail[start_at : start_at + READ_CHUNK_ROWS]]
                    quality.add_state_rows(store.written_for_segments_of(ids), now)
            else:  # every written row the state has
                for rows in store.written_for_segments():
                    quality.add_state_rows(rows, now)
            # The waiting predictions, from the state in either case (a snapshot's buckets count only written ones).
            by_time = quality.config
            quality.add_predictions(store.held_prediction_times(now - by_time.bucket_s * (by_time.buckets_kept + 1)), now)
        if newest_ids:
            quality.set_times_of_last(store.written_times(list(newest_ids), since=now - LAST_5M_S))

    # -- rotation by size (METRIC_LOG_MAX_BYTES)
    def _files_from(self, start: tuple[int, int, int] | None) -> list[tuple[Path, int, bool]]:
        """The files to read and the offset to read each from, oldest first: (path, offset, whether it
        is the current file). From a snapshot's (generation, offset, rows): that generation's file from
        the offset and every later one; else every rotated file still there, then the current file."""
        generation, offset = (start[0], start[1]) if start is not None else (0, 0)
        found = [(path, offset if number == generation else 0, False) for number, path in self.rotated() if number >= generation]
        return [*found, (self.csv.path, offset if generation == self.generation else 0, True)]

    def rotated(self) -> list[tuple[int, Path]]:
        """The rotated files of this ledger's CSV still in LOGS_DIR, (generation, path) oldest first
        (those of a later generation than the state's are not this state's: left out)."""
        return [(number, path) for number, path in rotated_metric_logs(self.logs_dir) if number < self.generation]

    def _rotated_rows(self, path: Path, offset: int) -> Iterator[MetricRow]:
        """A rotated file's rows; one that cannot be read (or no longer can) is said and read no further:
        it is the user's archive now, and its rows are in the statistics already (or lost with it)."""
        try:
            yield from read_rows(path, offset)
        except (OSError, MetricLogError) as exc:
            log.warning("cannot read the rotated %s (%s): its rows from there on are left out of the statistics", path, exc)

    def _finish_rotation(self, store: SqliteHalfStore) -> None:
        """A rotation cut short after its rename (the state's generation has its rotated file, whole):
        the state goes on to the next generation, and open_for_append begins the new file."""
        self.generation = store.counter("csv_generation") or 1
        rotated = rotated_metric_log(self.logs_dir, self.generation)
        if not rotated.exists() or store.counter("csv_rows") == 0:
            return  # (a file of that name beside a state without rows is not of this state: rotation will say so)
        log.warning(
            "%s exists: a rotation of %s was cut short; going on with generation %d",
            rotated, self.csv.path, self.generation + 1,
        )  # fmt: skip
        self._commit_rotation(store)

    def _commit_rotation(self, store: SqliteHalfStore) -> None:
        with store.transaction():
            store.set_counter("csv_generation", self.generation + 1)
            store.set_counter("csv_rows", 0)
            store.set_counter("csv_first_line", store.next_line())
        self.generation += 1

    def _rotate_if_full(self) -> Path | None:
        """After a batch is durable: a CSV over METRIC_LOG_MAX_BYTES is renamed with its generation and
        a new one begun (both names fsynced), then the state goes on to the next generation; the
        rotated file's path, or None."""
        if self.log_max_bytes <= 0 or self.csv.size() <= self.log_max_bytes:
            return None
        rotated = rotated_metric_log(self.logs_dir, self.generation)
        self.csv.rotate(rotated)
        self._commit_rotation(self.store)
        self.rotations += 1
        log.info(
            "%s passed METRIC_LOG_MAX_BYTES=%d: renamed %s; generation %d begun",
            self.csv.path, self.log_max_bytes, rotated.name, self.generation,
        )  # fmt: skip
        return rotated

    def file_of(self, generation: int | None) -> tuple[int, Path] | None:
        """The generation and path of the CSV file of ``generation`` (None: the current one), or None
        when there is none (a generation later than the current, or a rotated file no longer there)."""
        if generation is None or generation == self.generation:
            return self.generation, self.csv.path
        if generation > self.generation:
            return None
        path = rotated_metric_log(self.logs_dir, generation)
        return (generation, path) if path.exists() else None

    def file_to_read(self, generation: int | None, offset: int) -> tuple[int, Path] | None:
        """The file GET /metrics/rows reads for ``generation`` (None: the current) at ``offset``: ``file_of``,
        except that at offset 0 a generation no longer kept starts at the next one kept."""
        found = self.file_of(generation)
        if found is None and generation is not None and offset == 0 and generation < self.generation:
            later = [(number, path) for number, path in self.rotated() if number > generation]
            found = later[0] if later else (self.generation, self.csv.path)
        return found

    # -- snapshots: the statistics and the CSV offset they cover (services/common/snapshots.py)
    def _load_snapshot(self, quality: QualityStats, known: int) -> tuple[int, int, int] | None:
        """Load the snapshot into ``quality`` if it fits the CSV files and the state: (the generation
        and offset it goes on from, its rows of that file); else None and ``quality`` as it was (fresh)."""
        try:
            snapshot = read_snapshot(self.snapshot_path, SNAPSHOT_VERSION)
            start = self._covered(snapshot, known)
            quality.load(snapshot)
        except (SnapshotUnusable, KeyError, ValueError) as exc:
            if self.snapshot_path.exists():
                log.warning("cannot start from the snapshot: %s; reading %s whole", exc, self.csv.path)
            quality.reset()
            return None
        return start

    def _covered(self, snapshot: Snapshot, known: int) -> tuple[int, int, int]:
        """The generation, offset and rows ``snapshot`` covers; SnapshotUnusable unless they are of these
        CSV files and state. A snapshot of a file rotated since goes on from that file while it is there."""
        try:
            csv = snapshot.meta["csv"]
            offset, rows, device, inode = int(csv["offset"]), int(csv["rows"]), csv["device"], csv["inode"]
            generation = int(csv.get("generation", self.generation))  # none: made before rotation, of the current file
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotUnusable(f"{self.snapshot_path}: its meta is damaged ({exc!r})") from None
        found = self.file_of(generation)
        if found is None:
            raise SnapshotUnusable(f"{self.snapshot_path} was made of generation {generation} of {self.csv.path.name}, not here")
        path = found[1]
        if generation == self.generation:
            position = self.csv.position()
            if position is None or rows > known:
                raise SnapshotUnusable(f"{self.csv.path} or the state has less than {self.snapshot_path} covers")
        else:
            stat = path.stat()
            position = (stat.st_dev, stat.st_ino, stat.st_size)
        if (position[0], position[1]) != (device, inode):
            raise SnapshotUnusable(f"{self.snapshot_path} was made for another {path.name}")
        if position[2] < offset:
            raise SnapshotUnusable(f"{path} has less than {self.snapshot_path} covers")
        if csv.get("before_offset") != fingerprint(path, offset):
            raise SnapshotUnusable(f"{path} is not the file {self.snapshot_path} was made of (its bytes differ)")
        return generation, offset, rows

    def snapshot(self, quality: QualityStats) -> Snapshot | None:
        """The statistics and the CSV position they cover, between batches (under the service's lock)."""
        position = self.csv.position()
        if self._store is None or position is None:
            return None
        snapshot = Snapshot({"csv": {"device": position[0], "inode": position[1], "offset": position[2]}})
        snapshot.meta["csv"]["rows"] = self._store.counter("csv_rows")
        snapshot.meta["csv"]["generation"] = self.generation
        snapshot.meta["csv"]["before_offset"] = fingerprint(self.csv.path, position[2])
        quality.save(snapshot)
        return snapshot

    def write_snapshot(self, snapshot: Snapshot) -> int:
        """Write a snapshot ``snapshot()`` made (atomically; outside the lock); its size in bytes."""
        return write_snapshot(self.snapshot_path, SNAPSHOT_VERSION, snapshot)

    def record(self, halves: Sequence[tuple[Kind, LabelMessage | PredictionMessage]], now: float) -> Recorded:
        """One transaction: join every half, append the rows made (fsync), commit."""
        store = self.store
        if (changed := self.changed()) is not None:
            raise LedgerFilesChanged(changed)
        join = LabelPredictionJoin(store)
        recorded = Recorded()
        found_late: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        with store.transaction():
            for index, (kind, message) in enumerate(halves):
                version, estimate = getattr(message, "model_version", None), getattr(message, "estimated_error", None)
                tags = self._segment_tags(message) if kind == "y_pred" else None
                outcome = join.add(
                    kind, message.id, message.body, now,
                    ts=message.ts, model_version=version, tags=tags, estimate=estimate,
                )  # fmt: skip
                if kind == "y_pred" and isinstance(outcome, Held | Joined):
                    recorded.predicted_at.append(message.ts if message.ts is not None else now)
                    recorded.predictions.append((version or UNKNOWN_VERSION, estimate))
                if isinstance(outcome, Conflict):
                    recorded.conflicts.append((index, outcome.reason))
                elif isinstance(outcome, Joined):
                    recorded.rows.append(outcome.row)
                    if outcome.waited is not None and outcome.waited[1] < self._orphan_cutoff:
                        found_late[outcome.waited[0]] += 1
                elif isinstance(outcome, Duplicate):
                    recorded.duplicates += 1
            if recorded.rows:
                self.csv.append(recorded.rows)
                store.add_to_counter("csv_rows", len(recorded.rows))
            recorded.late_joins = sum(found_late.values())
            if recorded.late_joins:
                store.add_to_counter("late_joins", recorded.late_joins)
        if recorded.rows:  # the batch is durable (fsync, commit): a full file is rotated now, at its boundary
            try:
                recorded.rotated = self._rotate_if_full()
            except StorageErrors as exc:  # the batch stands; the next batch (or the file watch) repairs first
                self._rotation_problem = f"cannot rotate {self.csv.path}: {exc}"
                log.error("%s; the files are made whole again before the next batch", self._rotation_problem)
        if recorded.late_joins:  # committed: those orphans are orphans no more
            for kind, count in found_late.items():
                self.orphans_by_kind[kind] = max(0, self.orphans_by_kind[kind] - count)
            self.late_joins += recorded.late_joins
            self._orphan_list_stale = True
        return recorded

    def _segment_tags(self, message: LabelMessage | PredictionMessage) -> dict[str, str] | None:
        """The prediction's tags of SEGMENT_KEYS: all the state keeps of them."""
        tags = getattr(message, "tags", None)
        if not tags or not self.segment_keys:
            return None
        return {key: tags[key] for key in self.segment_keys if key in tags} or None

    def survey(self, now: float, *, write_list: bool = False) -> Survey:
        """Count the waiting halves: orphans (older than ORPHAN_TTL_S) and every one by age; with
        ``write_list``, rewrite orphans.csv if its list changed since it was last written."""
        store = self.store
        cutoff = now - self.orphan_ttl_s
        previous = self._orphan_cutoff if math.isfinite(self._orphan_cutoff) else cutoff
        ages = [now - bound for _, bound in AGE_BUCKETS[:-1]]
        counts = store.count_held_since([cutoff, min(previous, cutoff), *ages])
        newly: dict[Kind, int] = {}
        waiting = no_waiting()
        for kind in KINDS:
            total, since_cutoff, since_previous, *younger = counts[kind]
            self.orphans_by_kind[kind] = total - since_cutoff
            newly[kind] = since_previous - since_cutoff
            below = 0
            for (name, _), count in zip(AGE_BUCKETS, [*younger, total], strict=True):
                waiting[kind][name] = count - below
                below = count
        self.waiting = waiting
        if any(newly.values()) or not math.isfinite(self._orphan_cutoff):
            self._orphan_list_stale = True
        self._orphan_cutoff = cutoff
        survey = Survey(newly)
        if write_list and self._orphan_list_stale:
            survey.listed = self._write_orphan_list()
        return survey

    def _write_orphan_list(self) -> int | None:
        """orphans.csv: every half waiting since before the cutoff, oldest first (not created while there is none)."""
        self._orphan_list_stale = False
        if self.orphans == 0 and not self.orphan_log.exists():
            return None
        listed = 0

        def lines() -> Iterator[bytes]:
            nonlocal listed
            yield (ORPHAN_LOG_HEADER + "\n").encode()
            chunk: list[str] = []
            for held in self.store.held_before(self._orphan_cutoff):
                chunk.append(format_orphan(Orphan(*held)))
                if len(chunk) == ORPHAN_LINES_PER_WRITE:
                    yield "".join(chunk).encode()
                    listed += len(chunk)
                    chunk = []
            yield "".join(chunk).encode()
            listed += len(chunk)

        try:
            atomic_write_chunks(self.orphan_log, lines())
        except BaseException:
            self._orphan_list_stale = True
            raise
        with self.store.transaction():
            self.store.set_counter("orphan_list", 1)
        return listed

    def expire(self, now: float, limit: int = SWEEP_CHUNK) -> dict[Kind, int]:
        """Move up to ``limit`` halves that waited longer than HALF_RETENTION_S to expired_halves.log
        (appended, fsynced), then out of the state, in one transaction; how many of each kind."""
        store = self.store
        halves = store.held_oldest(now - self.half_retention_s, limit)
        by_kind: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        if not halves:
            return by_kind
        lines = [f"{i},{kind},{value!r},{arrived!r},{ts!r},{now!r}\n" for i, kind, value, arrived, ts in halves]
        self._append_expired(lines, now)
        with store.transaction():
            store.expire([(sample_id, kind) for sample_id, kind, *_ in halves], now)
            store.add_to_counter("expired", len(halves))
        self.expired += len(halves)
        for _, kind, *_ in halves:
            by_kind[kind] += 1
        return by_kind

    def _append_expired(self, lines: list[str], now: float) -> None:
        path = self.expired_log
        if path.exists() and path.stat().st_size >= self.expired_log_max_bytes:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            rotated = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
            n = 1
            while rotated.exists():
                rotated, n = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}"), n + 1
            path.replace(rotated)
            log.info("%s reached %d bytes: renamed %s, a new one begun", path, self.expired_log_max_bytes, rotated.name)
        append_with_header(path, EXPIRED_LOG_HEADER, lines)

    def forget(self, now: float, limit: int = SWEEP_CHUNK) -> int:
        """Forget up to ``limit`` ids written more than WRITTEN_HORIZON_S ago, and up to ``limit``
        expired more than HALF_RETENTION_S ago; how many."""
        store = self.store
        with store.transaction():
            return store.forget_before(now - self.written_horizon_s, now - self.half_retention_s, limit)

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
