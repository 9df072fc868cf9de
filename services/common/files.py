"""Writing files so that a reader never sees half of one."""

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FileIdentity = tuple[int, int]  # (device, inode): the file itself, whatever its name


def identity(stat: os.stat_result) -> FileIdentity:
    return stat.st_dev, stat.st_ino


def still_there(path: Path, expected: FileIdentity) -> tuple[os.stat_result | None, str | None]:
    """Whether ``path`` still names the file of ``expected``: its stat and None while it does,
    else None and how it does not (deleted or moved away, replaced, cannot be looked at)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None, f"{path} was deleted or moved away"
    except OSError as exc:
        return None, f"{path} cannot be looked at ({exc})"
    if identity(stat) != expected:
        return None, f"{path} was replaced by another file"
    return stat, None


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    atomic_write_chunks(path, [data])


def atomic_write_chunks(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    """``atomic_write`` of data made as it is written (a file larger than what memory should hold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o644)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# What the services write under LOGS_DIR (docs/monitoring.md, "Reading the outputs"); plot_api's PNGs
# are named in its chart registry, services/plot_api/charts.py.
METRIC_LOG = "metric_log.csv"
ORPHAN_LOG = "orphans.csv"
# orphans.csv as releases before late joins wrote it (halves dropped from the state), kept aside at the upgrade.
RELEASED_ORPHAN_LOG = "orphans.released.csv"
METRIC_STATE = "metric_state.sqlite3"
METRIC_SNAPSHOT = "metric_state.snapshot"  # metric_api: its statistics and the CSV offset they cover
PLOT_SNAPSHOT = "plot_state.snapshot"  # plot_api: its rows and distribution and the offsets they cover
EXPIRED_LOG = "expired_halves.log"  # metric_api: halves that waited past HALF_RETENTION_S, one line each
FEATURES_STATE = "features_state.json"  # features_api: whether its demo loop is paused


# metric_log.csv rotated by size (METRIC_LOG_MAX_BYTES): each full file is renamed with its generation,
# numbered upward and never renamed again; six digits so that `ls logs/metric_log*.csv` lists them
# oldest first and metric_log.csv (the newest rows) last: the order to read them in.
ROTATED_METRIC_LOG = re.compile(r"metric_log\.(\d{6,})\.csv")


def rotated_metric_log(logs_dir: Path, generation: int) -> Path:
    """Where generation ``generation`` of metric_log.csv is kept once it is full."""
    return logs_dir / f"metric_log.{generation:06d}.csv"


def rotated_metric_logs(logs_dir: Path) -> list[tuple[int, Path]]:
    """The rotated metric_log.csv files in ``logs_dir``, (generation, path) oldest first."""
    try:
        paths = list(logs_dir.iterdir())
    except FileNotFoundError:
        return []
    found = [(int(match[1]), path) for path in paths if (match := ROTATED_METRIC_LOG.fullmatch(path.name))]
    return sorted(found)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (the entry, not only the file's bytes)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def metadata_path(model_path: Path) -> Path:
    """The model file's sidecar (``<file>.json``): its hash, provenance and training metrics.

    Here rather than in model_api so that metric_api (which reads the training-target mean)
    does not import scikit-learn for it: that alone was ~110 MB of its memory.
    """
    return model_path.with_name(model_path.name + ".json")


def read_vouched(
    model_path: Path, metadata: dict[str, Any], key: str, what: str, again: str, suffix: str | None = None
) -> tuple[Path, bytes, str] | str:
    """The file beside ``model_path`` that the sidecar's ``metadata[key]`` (``{"file", "sha256"}``)
    names and vouches for: its path, bytes and sha256; or why there is none to use (``again`` says
    what to do about it). Only a bare file name is followed, never a path elsewhere; a file not ending
    in ``suffix`` (when given) is of an older version of this system."""
    sidecar = metadata_path(model_path)
    record = metadata.get(key)
    if record is None:
        return f"the model's metadata {sidecar} names no {what}: {again}"
    name, expected = (record.get("file"), record.get("sha256")) if isinstance(record, dict) else (None, None)
    if not isinstance(name, str) or not isinstance(expected, str) or Path(name).name != name:
        return f'the model\'s metadata {sidecar} has no usable "{key}" entry ({record!r}): {again}'
    path = model_path.with_name(name)
    if suffix is not None and path.suffix != suffix:
        return f"the {what} {path} was written by an older version of this system (not a {suffix} file): {again}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read the {what} {path} ({type(exc).__name__}: {exc}): {again}"
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 != expected:
        return f"the {what} {path} has sha256 {sha256} but {sidecar} expects {expected}: it changed after it was written; {again}"
    return path, data, sha256
