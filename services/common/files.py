"""Writing files so that a reader never sees half of one."""

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
METRIC_STATE = "metric_state.sqlite3"


def metadata_path(model_path: Path) -> Path:
    """The model file's sidecar (``<file>.json``): its hash, provenance and training metrics.

    Here rather than in model_api so that metric_api (which reads the training-target mean)
    does not import scikit-learn for it: that alone was ~110 MB of its memory.
    """
    return model_path.with_name(model_path.name + ".json")


def reference_path(model_path: Path) -> Path:
    """The model's drift reference (``<file>.reference.json``): what it was trained on, to compare
    what it is asked with; its sha256 is in the sidecar. Written by train and register."""
    return model_path.with_name(model_path.name + ".reference.json")
