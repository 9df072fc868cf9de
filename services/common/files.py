"""Writing files so that a reader never sees half of one."""

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

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


def metadata_path(model_path: Path) -> Path:
    """The model file's sidecar (``<file>.json``): its hash, provenance and training metrics.

    Here rather than in model_api so that metric_api (which reads the training-target mean)
    does not import scikit-learn for it: that alone was ~110 MB of its memory.
    """
    return model_path.with_name(model_path.name + ".json")
