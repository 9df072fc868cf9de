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


class BaselineInfo(Contract):
    """The constant predictor ``baseline_mae`` and ``skill`` are measured against."""

    mean: float | None
    source: str | None
    problem: str | None


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


class Summary(SummaryNumbers):
    """metric_api's ``GET /metrics/summary``."""

    baseline: BaselineInfo
    csv: str


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
