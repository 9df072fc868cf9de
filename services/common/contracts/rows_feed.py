"""metric_api's ``GET /metrics/rows``: metric_log.csv from a byte offset, whole lines only, for a
reader that follows the file over HTTP (plot_api, over the join's shards: docs/cluster.md).

The body is the CSV's bytes (``text/csv``: the header first when the offset is 0); two headers say
where to go on (``X-Next-Offset``) and which file this is (``X-Log-Id``: another after the file was
replaced). An offset past the end is a 416: the file was replaced or cut, read again from 0.
"""

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

ROWS_ROUTE = "/metrics/rows"
NEXT_OFFSET = "X-Next-Offset"
LOG_ID = "X-Log-Id"
ROWS_MAX_BYTES = 4 << 20  # at most this much of the file in one answer
REPLACED_STATUS = 416  # the offset is past the end: the file was replaced or cut


class RowsChunk(BaseModel):
    """One answer: whole lines of the file from an offset, where the next read starts, which file."""

    model_config = ConfigDict(frozen=True)

    data: bytes  # whole lines (each ends in a newline); empty when nothing new
    next_offset: int = Field(ge=0)
    log_id: str = Field(min_length=1)

    def headers(self) -> dict[str, str]:
        """The answer's headers, as the server sends them."""
        return {NEXT_OFFSET: str(self.next_offset), LOG_ID: self.log_id, "Cache-Control": "no-store"}

    @classmethod
    def of_answer(cls, headers: Mapping[str, str], content: bytes) -> "RowsChunk":
        """An answer as the reader gets it; pydantic's ValidationError (a ValueError) when it is not one."""
        return cls(data=content, next_offset=headers.get(NEXT_OFFSET), log_id=headers.get(LOG_ID))
