"""Segments and the buckets by prediction time merged over the join's shards, against pandas over the union."""

import numpy as np
import pandas as pd

from services.common.contracts.by_time import ByTime
from services.common.contracts.summary import JOIN_COUNTS, Summary
from services.common.metric_rows import MetricRow
from services.common.row_windows import RowWindows
from services.common.settings import Settings
from services.metric_api.by_time import ErrorByTime
from services.metric_api.monitor import QualityMonitor, Waiting
from services.plot_api.by_time_feed import merge_by_time
from services.plot_api.merged_summary import ShardSummary, merge_summaries
from tests.quality import expected_window

NOW = 1_700_100_000.0
BASELINE = 150.0
EXACT = ("count", "mae", "rmse", "me", "max_ae", "baseline_mae", "skill")


def rows_of(n: int, seed: int) -> list[MetricRow]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(25, 347, n).astype(float)
    y_pred = y_true + rng.normal(0, 30, n)
    regions = rng.choice(["EU", "US", "APAC"], n)
    return [
        MetricRow.of(f"{seed}-{i}", float(t), float(p), predicted_at=NOW - 7200 + 5.0 * i, tags={"region": str(r)})
        for i, (t, p, r) in enumerate(zip(y_true, y_pred, regions, strict=True))
    ]


def shard(rows: list[MetricRow]) -> Summary:
    monitor = QualityMonitor(Settings(BASELINE_MEAN=BASELINE, SEGMENT_KEYS="region"))
    monitor.add_rows(rows, NOW)
    body = monitor.summary(dict.fromkeys(JOIN_COUNTS, 0), "metric_log.csv", NOW, Waiting(0, {}))
    return Summary.model_validate_json(body)


def frame(rows: list[MetricRow]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "y_true": [r.y_true for r in rows],
            "y_pred": [r.y_pred for r in rows],
            "region": [(r.tags or {})["region"] for r in rows],
            "bucket": [(r.predicted_at or 0) // 3600 * 3600 for r in rows],
        }
    )


def close(got: float | int | None, want: float) -> bool:
    return got is not None and abs(got - want) <= 1e-9 * max(1.0, abs(want))


def test_each_segment_merged_over_the_shards_has_the_exact_numbers_of_the_union() -> None:
    first, second = rows_of(700, 1), rows_of(500, 2)
    union = RowWindows(BASELINE)
    union.add_history(first + second)
    merged = merge_summaries(
        [ShardSummary("http://a", shard(first)), ShardSummary("http://b", shard(second))], union.summary(NOW)
    )
    table = frame(first + second)
    segments = merged.model_dump()["segments"]
    for region, group in table.groupby("region"):
        window = segments["region"]["values"][str(region)]["windows"]["all"]
        expected = expected_window(group, BASELINE)
        assert all(close(window[name], expected[name]) for name in EXACT), region
        assert window["p50_ae"] is None and window["r2"] is None  # not mergeable from the shards' numbers
    assert merged.segments["region"].tracked == 3
    assert any("segments" in note for note in merged.approximate)


def test_buckets_merged_over_the_shards_sum_their_predictions_and_have_the_unions_mae() -> None:
    first, second = rows_of(700, 1), rows_of(500, 2)
    views = []
    for rows in (first, second):
        by_time = ErrorByTime(3600, 168, BASELINE)
        by_time.add_predictions([r.predicted_at or 0 for r in rows], NOW)
        by_time.add_rows(rows[: len(rows) // 2], NOW)
        views.append(ByTime.model_validate(by_time.report(NOW)))
    merged = merge_by_time(views, ["http://c"])
    table = frame(first + second)
    labelled = frame(first[:350] + second[:250])
    for bucket in merged.buckets:
        mine = labelled[labelled["bucket"] == bucket.start]
        assert bucket.predictions == int((table["bucket"] == bucket.start).sum())
        assert bucket.labelled == len(mine)
        assert close(bucket.stats.mae, expected_window(mine, BASELINE)["mae"]) if len(mine) else bucket.stats.mae is None
    assert any("http://c" in note for note in merged.approximate)
