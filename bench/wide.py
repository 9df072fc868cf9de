"""The pipeline on a wide schema: a 100-feature numeric scikit-learn Pipeline (harness.datasets' "wide"),
registered with its reference file as a user would, then the same throughput burst as diabetes'."""

from pathlib import Path
from typing import Any

from bench.machine import RssSampler
from bench.throughput import throughput
from harness.datasets import write_user_model
from harness.pipeline import Pipeline
from services.common.registration import schema_of
from services.model_api.register import register

KIND = "wide"


def register_wide_model(folder: Path) -> tuple[Path, int]:
    """Write the wide model and its reference CSV into ``folder`` and register them; the model file and
    how many features its schema has."""
    user = write_user_model(folder, KIND)
    metadata, _notes = register(user.model_path, user.reference_path, user.target)
    return user.model_path, len(schema_of(metadata).names)


def wide(pipeline: Pipeline, rss: RssSampler | None, samples: int, features: int, problems: list[str]) -> dict[str, Any]:
    """The throughput burst on the pipeline serving the wide model; its problems said as the wide section's."""
    found: list[str] = []
    result = throughput(pipeline, rss, samples, found)
    problems.extend(f"wide: {problem}" for problem in found)
    return {"features": features, **result}
