"""Snapshots of the statistics, so that a service starts in seconds whatever the length of
``metric_log.csv``: the state and the byte offset it covers, written atomically now and then;
at start only the CSV's tail past the offset is read.

One file: a magic line, a JSON header line (``version``, the payload's ``sha256``, the caller's
``meta``, and each array's name, dtype and shape), then the payload: the arrays' bytes one after
another, written from their own memory (no copy: a copy of arrays of 8 bytes a row, made every
minute, raised metric_api's memory high-water by as much again). A file that is
missing, cut short, altered or of another version is refused with ``SnapshotUnusable`` naming
why; the caller falls back to the full read. The helpers below turn the shared statistics
(``ErrorHistory``, ``RowWindows``) into meta and arrays and back, bit for bit.
"""

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.common.error_window import CompensatedSum, ErrorSums
from services.common.files import atomic_write_chunks
from services.common.quantile_sketch import QuantileSketch, SketchMismatch
from services.common.row_windows import ErrorHistory, RowWindows
from services.common.settings import ALL_EXACT_ROWS

MAGIC = b"model-monitor snapshot\n"
SNAPSHOT_PERIOD_S = 60.0  # how often a running service writes its snapshot (and once when it stops)


class SnapshotUnusable(Exception):
    """The snapshot cannot be used (missing, damaged, another version); the message says why."""


@dataclass
class Snapshot:
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def write_snapshot(path: Path, version: int, snapshot: Snapshot) -> int:
    """Write ``snapshot`` to ``path`` atomically (a reader sees the old file or the new, whole); its size.
    The arrays are written from their own memory (no copy of them is made: they may be large)."""
    arrays = [np.ascontiguousarray(array) for array in snapshot.arrays.values()]
    raw = [array.reshape(-1).view(np.uint8).data for array in arrays]  # the bytes, in place (also of empty arrays)
    if any(array.dtype.hasobject for array in arrays):
        raise ValueError("a snapshot holds numbers, not objects")
    digest = hashlib.sha256()
    for data in raw:
        digest.update(data)
    layout = [[name, array.dtype.str, list(array.shape)] for name, array in zip(snapshot.arrays, arrays, strict=True)]
    header = {"version": version, "sha256": digest.hexdigest(), "arrays": layout, "meta": snapshot.meta}
    head = MAGIC + json.dumps(header, allow_nan=False).encode() + b"\n"
    atomic_write_chunks(path, [head, *raw])
    return len(head) + sum(array.nbytes for array in arrays)


def read_snapshot(path: Path, version: int) -> Snapshot:
    """The snapshot at ``path``; SnapshotUnusable (naming the file and why) if it cannot be used."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotUnusable(f"{path} does not exist") from None
    except OSError as exc:
        raise SnapshotUnusable(f"{path} cannot be read: {exc}") from None
    if not data.startswith(MAGIC):
        raise SnapshotUnusable(f"{path} is not a snapshot (no {MAGIC!r} line)")
    end = data.find(b"\n", len(MAGIC))
    try:
        header = json.loads(data[len(MAGIC) : end])
        found_version, checksum, layout, meta = header["version"], header["sha256"], header["arrays"], header["meta"]
        shapes = [(str(name), np.dtype(kind), tuple(int(n) for n in shape)) for name, kind, shape in layout]
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotUnusable(f"{path}: its header is damaged ({exc})") from None
    if found_version != version:
        raise SnapshotUnusable(f"{path} is of version {found_version!r}, this release reads {version}")
    payload = memoryview(data)[end + 1 :]
    sizes = [kind.itemsize * math.prod(shape) for _, kind, shape in shapes]
    if end < 0 or len(payload) != sum(sizes):
        raise SnapshotUnusable(f"{path} is damaged: {len(payload)} bytes of arrays, not {sum(sizes)}")
    if hashlib.sha256(payload).hexdigest() != checksum:
        raise SnapshotUnusable(f"{path} is damaged: its checksum does not match")
    arrays, start = {}, 0
    for (name, kind, shape), size in zip(shapes, sizes, strict=True):
        arrays[name] = np.frombuffer(payload[start : start + size], dtype=kind).reshape(shape).copy()
        start += size
    return Snapshot(meta, arrays)


# -- the shared statistics, to meta and arrays and back
_SUMS = ("sum_e", "sum_e2", "sum_ae", "sum_ape", "sum_baseline_ae")


FINGERPRINT_BYTES = 4096


def fingerprint(path: Path, offset: int) -> str:
    """The sha256 of a file's last FINGERPRINT_BYTES before ``offset``: a file replaced by another that
    got the same inode number is told apart from the one a snapshot was made of."""
    if offset <= 0:
        return hashlib.sha256(b"").hexdigest()
    with path.open("rb") as f:
        f.seek(max(0, offset - FINGERPRINT_BYTES))
        return hashlib.sha256(f.read(min(offset, FINGERPRINT_BYTES))).hexdigest()


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def save_history(history: ErrorHistory, name: str, snapshot: Snapshot) -> None:
    """Its sums, and its |e| values (``<name>.ae``) or, once sketched, its sketch (``<name>.bins``, and
    an empty ``<name>.ae``: a release before sketches refuses the snapshot rather than misread it)."""
    sums = history.sums
    snapshot.meta[name] = {
        "count": sums.count,
        "count_ape": sums.count_ape,
        "mean_y": sums.mean_y,
        "m2_y": sums.m2_y,
        **{s: getattr(sums, s).parts() for s in _SUMS},
    }
    if history.sketch is not None:
        snapshot.meta[name]["sketch"] = history.sketch.meta()
        snapshot.arrays[f"{name}.bins"] = history.sketch.bins.copy()
        snapshot.arrays[f"{name}.ae"] = np.empty(0)
    else:
        snapshot.arrays[f"{name}.ae"] = history.exact().sorted().copy()


def load_history(baseline: float | None, name: str, snapshot: Snapshot, exact_rows: int = ALL_EXACT_ROWS) -> ErrorHistory:
    """What ``save_history`` saved (of a snapshot with or without sketches): exact values beyond
    ``exact_rows`` are sketched now; a sketch stays one (its exact values are gone)."""
    meta = snapshot.meta[name]
    history = ErrorHistory(baseline, exact_rows)
    sums: ErrorSums = history.sums
    sums.count, sums.count_ape, sums.mean_y, sums.m2_y = meta["count"], meta["count_ape"], meta["mean_y"], meta["m2_y"]
    for s in _SUMS:
        setattr(sums, s, CompensatedSum.of_parts(*meta[s]))
    errors = snapshot.arrays[f"{name}.ae"]
    if "sketch" in meta:
        try:
            sketch = QuantileSketch.of(meta["sketch"], snapshot.arrays[f"{name}.bins"])
        except SketchMismatch as exc:
            raise SnapshotUnusable(f"{name}: its sketch cannot be used ({exc})") from None
        if sketch.count != sums.count or len(errors):
            raise SnapshotUnusable(f"{name}: a sketch of {sketch.count} errors and {len(errors)} more for {sums.count} rows")
        history.absolute_errors, history.sketch = None, sketch
        return history
    if len(errors) != sums.count:
        raise SnapshotUnusable(f"{name}: {len(errors)} errors for {sums.count} rows")
    history.add_errors(errors)  # sketched if beyond exact_rows
    if history.sketch is None:
        history.exact().sorted()
    return history


def save_windows(windows: RowWindows, snapshot: Snapshot) -> None:
    """``all``, the ring of newest rows, the newest row and the rows left out."""
    save_history(windows.all, "all", snapshot)
    y_true, y_pred, at = windows.ring.last(windows.ring.capacity)
    snapshot.arrays.update({"ring.y_true": y_true.copy(), "ring.y_pred": y_pred.copy(), "ring.at": at.copy()})
    snapshot.meta["windows"] = {
        "baseline": windows.baseline,
        "ring_total": windows.ring.total,
        "ring_capacity": windows.ring.capacity,
        "last_id": windows.last_id,
        "last_row_at": _finite(windows.last_row_at),
        "excluded_rows": windows.excluded_rows,
    }


def load_windows(windows: RowWindows, snapshot: Snapshot) -> None:
    """Into a fresh ``windows`` (of the same baseline and ring size), what ``save_windows`` saved."""
    meta = snapshot.meta["windows"]
    if meta["baseline"] != windows.baseline:
        raise SnapshotUnusable(f"made with the baseline {meta['baseline']!r}, not {windows.baseline!r}")
    if meta["ring_capacity"] != windows.ring.capacity:
        raise SnapshotUnusable(f"made with a ring of {meta['ring_capacity']} rows, not {windows.ring.capacity}")
    windows.all = load_history(windows.baseline, "all", snapshot, windows.exact_rows)
    y_true, y_pred, at = (snapshot.arrays[f"ring.{column}"] for column in ("y_true", "y_pred", "at"))
    windows.ring.total = meta["ring_total"] - len(y_true)
    windows.ring.extend(y_true, y_pred, at)
    windows.last_id, windows.last_row_at, windows.excluded_rows = meta["last_id"], meta["last_row_at"], meta["excluded_rows"]
