"""The drift reference beside a model file: ``<model file>.reference.json``, vouched for by its
sha256 in the model's sidecar (``"reference": {"file", "sha256", "rows", "source"}``), as the
model file is by its own. A reference that is missing, changed or unreadable makes drift
"unavailable" with the reason; it never stops the model from serving (reading JSON runs no code).
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.files import atomic_write, metadata_path, reference_path
from services.model_api.drift import Reference

REWRITE = (
    "write one with `python -m services.model_api.train` (a new model) or "
    "`python -m services.model_api.register <model file>` (this one)"
)


@dataclass(frozen=True)
class LoadedReference:
    reference: Reference
    path: Path
    sha256: str


def write_reference(model_path: Path, reference: Reference) -> dict[str, Any]:
    """Write the reference beside ``model_path``; return what the sidecar records of it."""
    path = reference_path(model_path)
    data = json.dumps(reference.to_json(), separators=(",", ":")).encode()
    atomic_write(path, data)
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "rows": reference.rows, "source": reference.source}


def read_reference(model_path: Path, metadata: dict[str, Any]) -> LoadedReference | str:
    """The reference the model's sidecar vouches for, or why there is none to use."""
    sidecar = metadata_path(model_path)
    record = metadata.get("reference")
    if record is None:
        return f"the model's metadata {sidecar} names no drift reference (it was written before drift existed): {REWRITE}"
    name, expected = (record.get("file"), record.get("sha256")) if isinstance(record, dict) else (None, None)
    if not isinstance(name, str) or not isinstance(expected, str) or Path(name).name != name:
        return f'the model\'s metadata {sidecar} has no usable "reference" entry ({record!r}): {REWRITE}'
    path = model_path.with_name(name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read the drift reference {path} ({type(exc).__name__}: {exc}): {REWRITE}"
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 != expected:
        return (
            f"the drift reference {path} has sha256 {sha256} but {sidecar} expects {expected}: "
            f"it changed after it was written; {REWRITE}"
        )
    try:
        reference = Reference.from_json(json.loads(data))
    except ValueError as exc:  # BadReference and json's JSONDecodeError are ValueErrors
        return f"the drift reference {path} is unusable: {exc}"
    return LoadedReference(reference, path, sha256)
