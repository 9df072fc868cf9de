"""What ``train`` and ``register`` recorded about the model in its sidecar (``<MODEL_PATH>.json``):
its feature schema, whether it is served here (a model file) or elsewhere (a profile without
one), and its reference table. model_api loads the model against it; features_api's demo and
``/samples`` read the schema and the reference from it, so every service agrees on one schema
without asking another.

A sidecar written before schemas existed has none: it is the diabetes demo's (``DIABETES``).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.files import metadata_path
from services.common.schema import DIABETES, FeatureSchema

# In a sidecar: "here" (a model file beside it, vouched for by its sha256) or "elsewhere" (a profile:
# the user's own stack serves the model and reports its predictions to POST /predictions).
SERVED = "served"
ELSEWHERE = "elsewhere"
# The model_version of predictions from elsewhere that name none, unless the profile says another.
EXTERNAL_VERSION = "external"


class RegistrationError(RuntimeError):
    """The sidecar cannot be read or its schema is unusable; the message says which file and what to do."""


def schema_of(metadata: dict[str, Any], where: Path | str = "the sidecar") -> FeatureSchema:
    """The schema a sidecar records; the diabetes demo's for one written before schemas existed."""
    record = metadata.get("schema")
    if record is None:
        return DIABETES
    try:
        return FeatureSchema.from_json(record)
    except ValueError as exc:
        raise RegistrationError(f"{where} records an unusable schema: {exc}") from None


def served_elsewhere(metadata: dict[str, Any]) -> bool:
    return metadata.get(SERVED) == ELSEWHERE


@dataclass(frozen=True)
class Registration:
    """The sidecar of MODEL_PATH as read, and what it says."""

    model_path: Path
    metadata: dict[str, Any]
    schema: FeatureSchema

    @property
    def sidecar(self) -> Path:
        return metadata_path(self.model_path)

    @property
    def served_elsewhere(self) -> bool:
        return served_elsewhere(self.metadata)

    @property
    def model_version(self) -> str:
        """What the model's predictions carry: a model file's first 12 hex of its sha256; a profile's own name."""
        if self.served_elsewhere:
            return str(self.metadata.get("model_version") or EXTERNAL_VERSION)
        return str(self.metadata.get("sha256", ""))[:12] or "unknown"


def read_sidecar(model_path: Path) -> dict[str, Any]:
    """The sidecar's JSON object; FileNotFoundError when there is none, RegistrationError when it is unreadable."""
    sidecar = metadata_path(model_path)
    try:
        metadata = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise RegistrationError(f"cannot read model metadata {sidecar}: {exc}") from exc
    if not isinstance(metadata, dict):
        raise RegistrationError(f"model metadata {sidecar} is not a JSON object")
    return metadata


def read_registration(model_path: Path) -> Registration:
    """MODEL_PATH's registration; RegistrationError saying what to do when there is none to read."""
    try:
        metadata = read_sidecar(model_path)
    except FileNotFoundError:
        raise RegistrationError(
            f"no model metadata {metadata_path(model_path)} (MODEL_PATH={model_path}): train the demo with "
            f"`python -m services.model_api.train --out {model_path}`, or register yours with "
            f"`python -m services.model_api.register {model_path} --reference FILE --target COLUMN`"
        ) from None
    return Registration(model_path, metadata, schema_of(metadata, metadata_path(model_path)))
