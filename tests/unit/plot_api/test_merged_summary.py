"""One summary over the join's shards: each shard's summary made by metric_api's own monitor (so a
field renamed there breaks a test here), merged with the windows over the union of their rows, and
checked against figures computed here from the raw rows."""

import pytest

from services.common.contracts.summary import JOIN_COUNTS, Summary, WindowStats
from services.common.metric_rows import MetricRow
from services.common.row_windows import RowWindows
from services.common.settings import Settings
from services.metric_api.monitor import QualityMonitor, Waiting
from services.plot_api.merged_summary import ShardSummary, merge_summaries, merge_windows
from tests.unit.plot_api.test_shards import NOW, expected, make_rows


def shard_summary(
    rows: list[MetricRow], baseline: float, waiting: int = 3, mae_alert: float | None = None, **join: int
) -> Summary:
    """What a shard's metric_api answers, made as it makes it, ``waiting`` of its predictions still without label."""
    monitor = QualityMonitor(Settings(BASELINE_MEAN=baseline, MAE_ALERT=mae_alert))
    monitor.add_rows(rows, NOW)
    counts = {**dict.fromkeys(JOIN_COUNTS, 0), **join}
    body = monitor.summary(counts, "metric_log.csv", NOW, Waiting(waiting, {"y_pred": {"<1m": waiting}}))
    return Summary.model_validate_json(body)


def union_of(rows: list[MetricRow]) -> dict:
    windows = RowWindows()
    windows.add_history(rows)
    return windows.summary(NOW)


def test_the_summary_over_two_shards_is_that_of_all_their_rows() -> None:
    a, b = make_rows(700, 1, "a"), make_rows(300, 2, "b")
    baseline = 150.0
    merged = merge_summaries(
        [ShardSummary("http://s0", shard_summary(a, baseline, orphans=2)), ShardSummary("http://s1", shard_summary(b, baseline))],
        union_of(a + b),
    ).model_dump()
    want = expected(a + b, baseline)
    assert merged["count"] == 1000 and merged["missing"] == []
    for name, value in want.items():
        assert merged["windows"]["all"][name] == pytest.approx(value, rel=1e-9), name
    assert (merged["mae"], merged["rmse"]) == (merged["windows"]["all"]["mae"], merged["windows"]["all"]["rmse"])
    # Per model version and over the last 5 minutes: merged from the shards' figures.
    for version in ("v0", "v1"):
        rows = [row for row in a + b if row.model_version == version]
        window, want = merged["by_model_version"][version], expected(rows, baseline)
        for name in ("count", "mae", "rmse", "me", "max_ae", "baseline_mae", "skill"):
            assert window[name] == pytest.approx(want[name], rel=1e-9), (version, name)
        assert window["p50_ae"] is None and window["r2"] is None  # not mergeable from summaries: said, not guessed
    assert merged["windows"]["last_5m"]["rmse"] == pytest.approx(expected(a + b, baseline)["rmse"], rel=1e-9)
    assert merged["join"]["orphans"] == 2
    assert merged["labels"]["predictions"] == 1006 and merged["labels"]["waiting"] == {"y_pred": {"<1m": 6}}
    assert merged["labels"]["labelled_share"] == pytest.approx(1000 / 1006)
    assert merged["csv"] == ["metric_log.csv", "metric_log.csv"] and merged["baseline"]["mean"] == baseline


def test_a_shard_that_does_not_answer_is_named_not_an_error() -> None:
    a, b = make_rows(50, 3, "a"), make_rows(40, 4, "b")
    merged = merge_summaries(
        [ShardSummary("http://s0", shard_summary(a, 150.0)), ShardSummary("http://s1", None, "did not answer", rows_read=40)],
        union_of(a + b),
    )
    assert merged.missing == ["http://s1"]
    assert merged.model_dump(mode="json")["shards"] == [
        {"url": "http://s0", "answered": True, "count": 50, "rows_read": 0},
        {"url": "http://s1", "answered": False, "count": None, "rows_read": 40, "problem": "did not answer"},
    ]
    assert merged.count == 90  # the rows read from it before it went still count


def test_the_labelled_share_stays_a_share_when_a_shard_does_not_answer() -> None:
    """90 rows read (50 + 40), the answering shard's 53 predictions: 90 / 53 = 1.70 was reported.
    The silent shard's 40 rows read are predictions too (labelled ones): 90 of at least 93."""
    a, b = make_rows(50, 3, "a"), make_rows(40, 4, "b")
    merged = merge_summaries(
        [ShardSummary("http://s0", shard_summary(a, 150.0), rows_read=50), ShardSummary("http://s1", None, "down", rows_read=40)],
        union_of(a + b),
    )
    assert (merged.labels.labelled, merged.labels.predictions) == (90, 93)
    assert merged.labels.labelled_share == pytest.approx(90 / 93)


def test_an_alert_raised_on_any_shard_is_the_merged_summarys() -> None:
    """The alert of the second shard only (its MAE above the threshold) was lost: the first shard's null was taken."""
    calm = [MetricRow.of(f"a{i}", 100.0, 101.0) for i in range(10)]
    bad = [MetricRow.of(f"b{i}", 100.0, 150.0) for i in range(10)]
    shards = [ShardSummary("http://s0", shard_summary(calm, 100.0, mae_alert=10.0))]
    shards.append(ShardSummary("http://s1", shard_summary(bad, 100.0, mae_alert=10.0)))
    alert = merge_summaries(shards, union_of(calm + bad)).alert
    assert alert is not None and (alert.window, alert.mae, alert.threshold, alert.since) == ("last_100", 50.0, 10.0, NOW)


def test_merging_no_rows_is_an_empty_window() -> None:
    empty = WindowStats.model_validate({"count": 0} | dict.fromkeys(list(WindowStats.model_fields)[1:]))
    assert merge_windows([empty]).count == 0
    assert merge_windows([]).mae is None
