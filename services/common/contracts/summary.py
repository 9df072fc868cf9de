"""The summary of the model's error: metric_api's ``GET /metrics/summary`` (``Summary``) and
plot_api's ``GET /api/summary`` over the join's shards (``MergedSummary``). docs/monitoring.md,
"The summary", says what each field means."""

from typing import Any, Literal

from pydantic import Field

from services.common.contracts import Contract

SUMMARY_ROUTE = "/metrics/summary"


class WindowStats(Contract):
    """The twelve numbers of one window of rows, the error being ``e = y_pred - y_true``. An empty
    window has ``count`` 0 and every other field null; a number that does not exist is null, never NaN."""

    count: int
    mae: float | None
    rmse: float | None
    me: float | None
    mape: float | None
    r2: float | None
    max_ae: float | None
    p50_ae: float | None
    p90_ae: float | None
    p95_ae: float | None
    baseline_mae: float | None
    skill: float | None


WINDOW_FIELDS = tuple(WindowStats.model_fields)


class Windows(Contract):
    all: WindowStats
    last_100: WindowStats
    last_1000: WindowStats
    last_5m: WindowStats


class Timing(Contract):
    """Two percentiles of a time (s), over the newest rows joined by the running process."""

    p50_s: float | None
    p99_s: float | None


class JoinCounts(Contract):
    """The halves waiting for their partner and what became of the others; the label-to-prediction lag."""

    pending_y_true: int
    pending_y_pred: int
    orphans: int
    late_joins: int
    dead_lettered: int
    expired: int = 0  # halves that waited past HALF_RETENTION_S, moved to expired_halves.log (0 from an older shard)
    lag_p50_s: float | None
    lag_p99_s: float | None


JOIN_COUNTS = tuple(name for name in JoinCounts.model_fields if not name.startswith("lag_"))  # the counters, not the lags


class Labels(Contract):
    """How many predictions have their label, how late labels come, what still waits (by kind and age)."""

    predictions: int
    labelled: int
    labelled_share: float | None = Field(ge=0, le=1)
    lag_p50_s: float | None
    lag_p99_s: float | None
    waiting: dict[str, dict[str, int]]


class MaeAlertState(Contract):
    """The MAE alert while it is raised."""

    window: str
    mae: float | None
    threshold: float
    since: float


class AlertInfo(Contract):
    """One alert of the board (services/common/alerts.py): its state, since when, and the rule's last word."""

    state: Literal["raised", "cleared"]
    since: float | None
    summary: str
    details: dict[str, Any]


class EstimateWindow(Contract):
    """The estimated MAE of a window of predictions, labelled or not (issue 24), and the half-width of its band."""

    predictions: int
    estimated_mae: float | None
    band: float | None


class EstimateCheck(Contract):
    """Joined rows that had an estimate: their realized MAE beside the estimated MAE of the same ids."""

    rows: int
    realized_mae: float | None
    estimated_mae: float | None
    band: float | None


class VersionEstimate(Contract):
    """One model version's estimate: by window of predictions, and checked by window of joined rows."""

    windows: dict[str, EstimateWindow]
    checked: dict[str, EstimateCheck]
    without_estimate: int
    band_basis: str | None  # "reference" (the sidecar's calibration), "joined rows", or null (no band yet)
    alert_raised: bool


class EstimateSummary(Contract):
    """The error before the labels come (docs/monitoring.md, "Estimated MAE")."""

    available: bool
    unavailable_because: str | None
    by_model_version: dict[str, VersionEstimate]


class BaselineInfo(Contract):
    """The constant predictor ``baseline_mae`` and ``skill`` are measured against."""

    mean: float | None
    source: str | None
    problem: str | None


class SegmentWindows(Contract):
    """One segment's windows: every row of it (since it was tracked), and its newest 100 and 1,000."""

    all: WindowStats
    last_100: WindowStats
    last_1000: WindowStats


class Segment(Contract):
    """The statistics of one value of a segment key (or of ``(other)``: the values not tracked)."""

    windows: SegmentWindows
    # The lower bound of the 95% confidence interval of the last_1000 MAE (mae - 1.96 sd(|e|)/sqrt(n)):
    # what the dashboard ranks segments by, worst first, so a segment of 3 rows does not top it by chance.
    mae_low: float | None
    # Its newest joined rows that carried an estimate (at most 300): realized MAE beside estimated
    # (null while none had one); the segment-estimate alert tests these rows.
    checked: EstimateCheck | None = None


class SegmentKey(Contract):
    """One key of SEGMENT_KEYS: its tracked values (at most ``values_max``) and ``(other)``."""

    values: dict[str, Segment]
    tracked: int
    values_max: int
    promoted: int  # values that became tracked after the budget was full (their earlier rows stay in (other))


class SummaryNumbers(Contract):
    """What a summary has, whether of one metric_api or merged over several."""

    count: int
    mae: float | None
    rmse: float | None
    windows: Windows
    by_model_version: dict[str, WindowStats]
    join: JoinCounts
    labels: Labels
    latency: Timing
    last_id: str | None
    last_row_at: float | None
    rows_per_s: float
    excluded_rows: int
    alert: MaeAlertState | None
    alerts: dict[str, AlertInfo] = Field(default_factory=dict)  # every alert of metric_api's board, by name
    segments: dict[str, SegmentKey] = Field(default_factory=dict)  # by SEGMENT_KEYS key (docs/monitoring.md, "Segments")
    estimate: EstimateSummary | None = None  # issue 24


class Summary(SummaryNumbers):
    """metric_api's ``GET /metrics/summary``."""

    baseline: BaselineInfo
    csv: str
    # The windows whose p50/p90/p95_ae are a quantile sketch's (within 0.5 %), not exact: a population past
    # ALL_EXACT_ROWS rows, e.g. "windows.all", "by_model_version.<version>", "segments.<key>.<value>.all".
    approximate: list[str] = Field(default_factory=list)


class ShardState(Contract):
    """One shard of the join as plot_api last saw it."""

    url: str
    answered: bool
    count: int | None
    rows_read: int
    problem: str | None = Field(default=None, exclude_if=lambda problem: problem is None)


class MergedSummary(SummaryNumbers):
    """plot_api's ``GET /api/summary`` over several shards: their summaries merged, with what is
    exact, what is null and what is approximate said (plot_api/merged_summary.py)."""

    baseline: BaselineInfo | None  # the first answering shard's; null when none answered
    csv: list[str]  # each answering shard's
    shards: list[ShardState]
    missing: list[str]  # the URLs of the shards that did not answer
    approximate: list[str]
