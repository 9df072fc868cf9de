"""Reading and writing the model file and its sidecar metadata (``<model file>.json``)."""

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

from services.common.files import atomic_write


class ModelFileError(RuntimeError):
    """The model file is missing or unusable; the message says which file and what to do."""


def metadata_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".json")


def save_model(model: Any, path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Pickle ``model`` to ``path`` and write its metadata, with the file's sha256, beside it."""
    data = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    metadata = {**metadata, "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write(path, data)
    atomic_write(metadata_path(path), json.dumps(metadata, indent=2).encode())
    return metadata


def load_model(path: Path) -> tuple[Any, dict[str, Any]]:
    """The unpickled model and its metadata (``{}`` when there is no sidecar file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(
            f"model file {path} does not exist: train one with `python -m services.model_api.train` "
            "(make run does this) or point MODEL_PATH at yours"
        ) from None
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc}") from exc
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        metadata = json.loads(metadata_path(path).read_text())
    except FileNotFoundError:
        metadata = {}
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read model metadata {metadata_path(path)}: {exc}") from exc
    try:
        model = pickle.loads(data)  # noqa: S301 - the file is the operator's own model
    except Exception as exc:
        raise ModelFileError(f"model file {path} could not be unpickled: {type(exc).__name__}: {exc}") from exc
    return model, {**metadata, "sha256": sha256}
