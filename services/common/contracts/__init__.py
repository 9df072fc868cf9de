"""The JSON documents one service serves and another reads, one pydantic model each: the
``response_model`` of the route that serves it, and the parser of the service that reads it.

- ``summary``: metric_api's ``GET /metrics/summary``, and plot_api's ``GET /api/summary`` over the shards;
- ``drift``: model_api's ``GET /drift``, relayed and drawn by plot_api;
- ``rows_feed``: metric_api's ``GET /metrics/rows``, metric_log.csv followed by plot_api over several shards.

A document with a field its model does not name is refused (``extra="forbid"``), on either side:
a key renamed or added on one side fails a test instead of vanishing from the other. The services
are released together; docs/monitoring.md documents each document field by field.
"""

from pydantic import BaseModel, ConfigDict, ValidationError


class Contract(BaseModel):
    """A document between services: every field named, nothing else accepted."""

    model_config = ConfigDict(extra="forbid")


def refusal(exc: ValidationError) -> str:
    """Why a document was refused, in one line: the first problem's place and message, and how many more."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "the document"
    more = exc.error_count() - 1
    return f"{where}: {first['msg']}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
