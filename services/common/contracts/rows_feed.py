"""metric_api's ``GET /metrics/rows``: metric_log.csv from a byte offset, whole lines only, for a
reader that follows the file over HTTP (plot_api, over the join's shards: docs/cluster.md).

The body is the CSV's bytes (``text/csv``: the header first when the offset is 0); headers say
where to go on (``X-Next-Offset``) and which file this is (``X-Log-Id``: another after the file was
replaced). An offset past the end is a 416: the file was replaced or cut, read again from 0.

Rotation (METRIC_LOG_MAX_BYTES): each file of the log has a generation, numbered upward; the newest
(metric_log.csv) is ``X-Log-Current-Generation``, and ``X-Log-Generation`` says which one an answer
is of. ``?generation=G`` reads generation G's file (a rotated one while it is kept; the current one
without the parameter; with offset 0 a generation no longer kept, 0 say, starts at the oldest kept);
a generation that is not there at a non-zero offset is a 416. A follower reads its generation to the
end, and when an answer of a generation older than the current brings nothing more, goes on with the
next generation at offset 0: no row missed, none read twice (``RowsChunk.next_position``).
"""

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

ROWS_ROUTE = "/metrics/rows"
NEXT_OFFSET = "X-Next-Offset"
LOG_ID = "X-Log-Id"
GENERATION = "X-Log-Generation"
CURRENT_GENERATION = "X-Log-Current-Generation"
ROWS_MAX_BYTES = 4 << 20  # at most this much of the file in one answer
REPLACED_STATUS = 416  # the offset is past the end (the file was replaced or cut), or its generation is gone


class RowsChunk(BaseModel):
    """One answer: whole lines of a file from an offset, where the next read starts, which file."""

    model_config = ConfigDict(frozen=True)

    data: bytes  # whole lines (each ends in a newline); empty when nothing new
    next_offset: int = Field(ge=0)
    log_id: str = Field(min_length=1)
    generation: int | None = Field(None, ge=0)  # None from a metric_api before rotation
    current_generation: int | None = Field(None, ge=0)

    def headers(self) -> dict[str, str]:
        """The answer's headers, as the server sends them."""
        headers = {NEXT_OFFSET: str(self.next_offset), LOG_ID: self.log_id, "Cache-Control": "no-store"}
        if self.generation is not None and self.current_generation is not None:
            headers |= {GENERATION: str(self.generation), CURRENT_GENERATION: str(self.current_generation)}
        return headers

    @property
    def finished(self) -> bool:
        """Nothing more will come of this file: it is a rotated one (older than the current) and this
        answer, asked at its end, brought nothing."""
        return (
            not self.data
            and self.generation is not None
            and self.current_generation is not None
            and self.generation < self.current_generation
        )

    @classmethod
    def of_answer(cls, headers: Mapping[str, str], content: bytes) -> "RowsChunk":
        """An answer as the reader gets it; pydantic's ValidationError (a ValueError) when it is not one."""
        return cls(
            data=content,
            next_offset=headers.get(NEXT_OFFSET),
            log_id=headers.get(LOG_ID),
            generation=headers.get(GENERATION),
            current_generation=headers.get(CURRENT_GENERATION),
        )
