"""metric_api's ``GET /metrics/by-time`` (``ByTime``), and plot_api's ``GET /api/by-time`` over the
join's shards: the error of the predictions made in each time bucket, with how much of each is
labelled yet. docs/monitoring.md, "The error by prediction time", says what each field means."""

from pydantic import Field

from services.common.contracts import Contract
from services.common.contracts.summary import WindowStats

BY_TIME_ROUTE = "/metrics/by-time"


class TimeBucket(Contract):
    """The predictions made in ``[start, end)`` (epoch seconds) and the statistics of those labelled so far."""

    start: float
    end: float
    predictions: int  # predictions made in the bucket that reached the join (with or without their label)
    labelled: int  # of them, joined with their label (a row of metric_log.csv)
    labelled_share: float | None = Field(ge=0, le=1)
    stats: WindowStats  # the twelve numbers over the labelled ones


class Dropped(Contract):
    """What fell out of the buckets kept (older than TIME_BUCKETS_KEPT buckets, or made in the future)."""

    predictions: int
    labelled: int


class ByTime(Contract):
    bucket_s: float
    buckets_kept: int
    buckets: list[TimeBucket]  # oldest first; a bucket without a prediction is left out
    dropped: Dropped
    approximate: list[str] = Field(default_factory=list)  # plot_api's merge over shards says what is not exact
