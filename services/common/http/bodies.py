"""Request bodies: ``StrictBody``, the base of every JSON body a route takes, and ``schema_rows``,
the model's features checked on the way in (a 422 naming each that does not fit)."""

from collections.abc import Callable, Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict

from services.common.http.errors import MAX_ERRORS
from services.common.schema import FeatureSchema, SchemaViolation, problem_errors


class StrictBody(BaseModel):
    """A JSON request body: ``"3"`` is not 3 and ``true`` is not 1, NaN and Infinity are no numbers,
    and an unknown field (a typo) is refused rather than ignored."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def schema_rows(
    schema: FeatureSchema, bodies: Sequence[Any], loc: Callable[[int], tuple[str | int, ...]]
) -> list[list[float | str | None]]:
    """Each features body checked against ``schema``, in schema order; a 422 naming every body's
    problems (at ``loc(i)`` in the request, then the feature) when any does not fit."""
    rows: list[list[float | str | None]] = []
    errors: list[dict[str, Any]] = []
    for i, body in enumerate(bodies):
        try:
            rows.append(schema.row(body))
        except SchemaViolation as exc:
            errors.extend(problem_errors(exc, loc(i), body))
            if len(errors) >= MAX_ERRORS:
                break
    if errors:
        raise RequestValidationError(errors)
    return rows
