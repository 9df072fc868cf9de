"""The segments core and the buckets by prediction time, against pandas over the same rows."""

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from services.common.alerts import AlertBoard
from services.common.metric_rows import MetricRow
from services.common.segment_rank import mae_low
from services.metric_api.by_time import ErrorByTime
from services.metric_api.segment_metrics import SegmentCollector
from services.metric_api.segments import OTHER, SegmentBook
from services.metric_api.where_when import SegmentAlerts, SegmentedStats, WhereWhenConfig
from tests.quality import differences, expected_window

T0 = 1_700_000_000.0
BASELINE = 150.0


def tagged_rows(n: int, seed: int, regions: int = 4) -> list[MetricRow]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(25, 347, n).astype(float)
    y_pred = y_true + rng.normal(0, 40, n)
    region = rng.integers(0, regions, n)
    channel = rng.integers(0, 2, n)
    return [
        MetricRow.of(
            f"{T0 + i:.6f}",
            float(t),
            float(p),
            predicted_at=T0 + i * 37.0,
            tags={"region": f"r{r}", **({"channel": "mobile"} if c else {})},
        )
        for i, (t, p, r, c) in enumerate(zip(y_true, y_pred, region, channel, strict=True))
    ]


def as_frame(rows: list[MetricRow]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "y_true": [r.y_true for r in rows],
            "y_pred": [r.y_pred for r in rows],
            "region": [(r.tags or {}).get("region") for r in rows],
            "channel": [(r.tags or {}).get("channel") for r in rows],
            "predicted_at": [r.predicted_at for r in rows],
        }
    )


def test_each_segment_has_the_numbers_pandas_gives_its_rows_fed_in_batches() -> None:
    rows = tagged_rows(3000, 1)
    stats = SegmentedStats(BASELINE, WhereWhenConfig(("region", "channel"), 50))
    for start in range(0, len(rows), 97):
        stats.add_rows(rows[start : start + 97], T0 + 200_000)
    segments = stats.summary(T0 + 200_000)["segments"]
    table = as_frame(rows)
    for key in ("region", "channel"):
        groups = dict(tuple(table.groupby(key)))
        assert set(segments[key]["values"]) == set(groups)  # no (other): every value is tracked
        for value, group in groups.items():
            windows = segments[key]["values"][value]["windows"]
            assert differences(windows["all"], expected_window(group, BASELINE)) == []
            assert differences(windows["last_100"], expected_window(group.tail(100), BASELINE)) == []
            assert differences(windows["last_1000"], expected_window(group.tail(1000), BASELINE)) == []
    # Rows without the channel tag are in no channel segment.
    assert segments["channel"]["values"]["mobile"]["windows"]["all"]["count"] == int((table["channel"] == "mobile").sum())


def test_100000_distinct_values_keep_at_most_values_max_segments_and_every_row_counted_once() -> None:
    book = SegmentBook(("user",), 50, None)
    rng = np.random.default_rng(7)
    total = 0
    for batch in range(100):
        values = [f"u{batch * 1000 + i}" for i in range(1000)]  # 100,000 distinct values
        rows = [MetricRow.of(v, 1.0, 1.0 + rng.random(), tags={"user": v}) for v in values]
        book.add(rows, np.ones(1000), np.array([r.y_pred for r in rows]))
        total += 1000
        assert book.segment_count() <= 51
    segments = book.by_key["user"].segments()
    assert len(segments) == 51 and OTHER in segments
    assert sum(s.count for s in segments.values()) == total
    assert book.by_key["user"].promoted == 0  # no value was seen twice: none earned a place
    assert len(book.by_key["user"].sketch) <= 200


def test_prometheus_series_stay_bounded_under_100000_distinct_values() -> None:
    stats = SegmentedStats(None, WhereWhenConfig(("user",), 50))
    for batch in range(100):
        rows = [MetricRow.of(str(i), 1.0, 2.0, tags={"user": f"u{batch * 1000 + i}"}) for i in range(1000)]
        stats.add_rows(rows, T0)
    collector = SegmentCollector()
    collector.summary = stats.summary
    families = {family.name: family for family in collector.collect()}
    assert len(families["model_segment_rows"].samples) == 51 * 3  # 50 values and (other), three windows
    assert sum(s.value for s in families["model_segment_rows"].samples if s.labels["window"] == "all") == 100_000


def test_a_frequent_value_that_comes_late_takes_the_place_of_the_least_frequent() -> None:
    book = SegmentBook(("city",), 3, None)
    feed = [*(f"once{i}" for i in range(3)), *(["Lyon"] * 50)]
    rows = [MetricRow.of(str(i), 1.0, 2.0, tags={"city": v}) for i, v in enumerate(feed)]
    for row in rows:
        book.add([row], np.ones(1), np.full(1, 2.0))
    segments = book.by_key["city"].segments()
    assert "Lyon" in segments and book.by_key["city"].promoted == 1
    assert sum(s.count for s in segments.values()) == len(rows)  # folded, never lost


def test_the_ranking_bound_puts_a_steady_bad_segment_above_three_unlucky_rows() -> None:
    small = {"count": 3, "mae": 60.0, "rmse": 75.0}  # three rows, one very wrong
    steady = {"count": 800, "mae": 40.0, "rmse": 48.0}
    low_small, low_steady = mae_low(small), mae_low(steady)
    assert low_small is not None and low_steady is not None and low_steady > low_small
    assert mae_low({"count": 1, "mae": 5.0, "rmse": 5.0}) is None


def test_buckets_count_predictions_on_arrival_and_are_revised_by_late_labels() -> None:
    rows = tagged_rows(600, 2)  # predicted over about 6 hours
    now = T0 + 30_000
    by_time = ErrorByTime(3600, 168, BASELINE)
    by_time.add_predictions([r.predicted_at or 0.0 for r in rows], now)
    first, late = rows[::2], rows[1::2]
    by_time.add_rows(first, now)
    table = as_frame(rows).assign(bucket=lambda t: (t["predicted_at"] // 3600) * 3600)
    labelled = table.iloc[::2]
    report = by_time.report(now)
    assert [b["start"] for b in report["buckets"]] == sorted(table["bucket"].unique())
    for bucket in report["buckets"]:
        assert bucket["predictions"] == int((table["bucket"] == bucket["start"]).sum())
        mine = labelled[labelled["bucket"] == bucket["start"]]
        assert bucket["labelled"] == len(mine) and bucket["labelled_share"] < 1
        assert differences(bucket["stats"], expected_window(mine, BASELINE)) == []
    by_time.add_rows(late, now + 1)  # the late labels revise the same buckets
    for bucket in by_time.report(now + 1)["buckets"]:
        mine = table[table["bucket"] == bucket["start"]]
        assert bucket["labelled_share"] == 1.0
        assert differences(bucket["stats"], expected_window(mine, BASELINE)) == []


def test_buckets_beyond_the_retention_are_dropped_and_counted() -> None:
    by_time = ErrorByTime(60, 3)
    by_time.add_predictions([0.0, 61.0, 125.0, 190.0], now=190.0)
    assert [b["start"] for b in by_time.report(190.0)["buckets"]] == [60.0, 120.0, 180.0]
    assert by_time.report(190.0)["dropped"] == {"predictions": 1, "labelled": 0}
    by_time.add_rows([MetricRow.of("a", 1.0, 2.0, predicted_at=5.0)], now=190.0)  # its bucket is gone
    by_time.add_predictions([10**9 * 1.0], now=190.0)  # from a wrong clock, far ahead
    assert by_time.report(190.0)["dropped"] == {"predictions": 2, "labelled": 1}


class Board(AlertBoard):
    def __init__(self) -> None:
        super().__init__("metric_api", None)
        self.changes: list[tuple[str, bool]] = []

    def set(self, name: str, raised: bool, at: float, summary: str = "", details: Mapping[str, Any] | None = None) -> bool:
        changed = super().set(name, raised, at, summary, details)
        if changed:
            self.changes.append((name, raised))
        return changed


def fed_until_a_change(
    stats: SegmentedStats, alerts: SegmentAlerts, board: Board, batches: Iterable[tuple[int, list[MetricRow]]]
) -> int:
    """Each batch added at time i and the segments' alerts checked, until the board changes; Lyon's rows fed."""
    lyon_rows = 0
    for i, rows in batches:
        lyon_rows += sum(1 for row in rows if "Lyon" in (row.tags or {}).values())
        stats.add_rows(rows, float(i))
        alerts.check(stats, float(i))
        if board.changes:
            break
    return lyon_rows


@pytest.mark.parametrize("seed", [3, 4])
def test_one_degraded_segment_raises_its_alert_once_within_150_of_its_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    stats = SegmentedStats(None, WhereWhenConfig(("region",), 50))
    board = Board()
    alerts = SegmentAlerts(board, factor=1.5, min_rows=50)

    def batch(i: int, degraded: bool) -> list[MetricRow]:
        regions = rng.choice(["Paris", "Lyon", "Nice", "Lille"], 20)
        y_true = rng.integers(25, 347, 20).astype(float)
        noise = rng.normal(0, 10, 20) + np.where((regions == "Lyon") & degraded, 25.0, 0.0)
        return [
            MetricRow.of(f"{i}.{k}", float(t), float(t + e), tags={"region": str(r)})
            for k, (t, e, r) in enumerate(zip(y_true, noise, regions, strict=True))
        ]

    fed_until_a_change(stats, alerts, board, ((i, batch(i, False)) for i in range(100)))
    assert board.changes == []
    lyon_rows = fed_until_a_change(stats, alerts, board, ((i, batch(i, True)) for i in range(100, 200)))
    assert board.changes == [("segment/region=Lyon", True)]
    assert lyon_rows <= 150


def test_a_core_rebuilt_at_start_up_raises_the_alert_of_a_segment_already_bad() -> None:
    stats = SegmentedStats(None, WhereWhenConfig(("city",), 50))
    rows = [
        MetricRow.of(str(i), 100.0, 100.0 + (40.0 if city == "Lyon" else 5.0), tags={"city": city})
        for i, city in enumerate(["Paris", "Lyon", "Nice", "Lille"] * 100)
    ]
    stats.add_state_rows(rows, T0)  # as the ledger feeds it from the state
    stats.add_history(rows)
    board = Board()
    SegmentAlerts(board, factor=1.5, min_rows=50).check_all(stats, T0)
    assert board.changes == [("segment/city=Lyon", True)]


def concept_batch(rng: np.random.Generator, i: int, shift: float, estimate: float = 8.0) -> list[MetricRow]:
    """20 rows over four cities, each with the loss model's estimate of its error (that of a calm row:
    E|N(0, 10)| ≈ 7.98); Lyon's predictions ``shift`` too high, which the estimate cannot know."""
    cities = rng.choice(["Paris", "Lyon", "Nice", "Lille"], 20)
    y_true = rng.integers(25, 347, 20).astype(float)
    noise = rng.normal(0, 10, 20) + np.where(cities == "Lyon", shift, 0.0)
    return [
        MetricRow.of(f"{i}.{k}", float(t), float(t + e), tags={"city": str(c)}, estimated_error=estimate)
        for k, (t, e, c) in enumerate(zip(y_true, noise, cities, strict=True))
    ]


@pytest.mark.parametrize("seed", [5, 6])
def test_a_concept_shift_in_one_segment_raises_its_estimate_check_alone(seed: int) -> None:
    rng = np.random.default_rng(seed)
    stats = SegmentedStats(None, WhereWhenConfig(("city",), 50))
    board = Board()
    alerts = SegmentAlerts(board, factor=3.0, min_rows=50)  # factor 3: the MAE alert stays out of it
    # 3,000 calm rows: the estimate holds everywhere
    fed_until_a_change(stats, alerts, board, ((i, concept_batch(rng, i, 0.0)) for i in range(150)))
    assert board.changes == []
    # Lyon's MAE ≈ 13 against the 8 estimated: 1.4 x the rest's
    lyon_rows = fed_until_a_change(stats, alerts, board, ((i, concept_batch(rng, i, 12.0)) for i in range(150, 250)))
    assert board.changes == [("segment-estimate/city=Lyon", True)]
    assert lyon_rows <= 150
    alert = board.to_json()["segment-estimate/city=Lyon"]
    assert alert["details"]["realized_mae"] > alert["details"]["estimated_mae"] + alert["details"]["band"]
    assert "city=Lyon" in alert["summary"]
    for i in range(250, 400):  # Lyon mended: cleared, once
        stats.add_rows(concept_batch(rng, i, 0.0), float(i))
        alerts.check(stats, float(i))
    assert board.changes == [("segment-estimate/city=Lyon", True), ("segment-estimate/city=Lyon", False)]


def test_each_segments_check_is_its_newest_300_rows_with_an_estimate_as_pandas_says() -> None:
    rng = np.random.default_rng(9)
    rows = [
        MetricRow.of(
            str(i),
            float(t),
            float(t + rng.normal(0, 20)),
            tags={"city": str(rng.choice(["Paris", "Lyon"]))},
            estimated_error=None if rng.random() < 0.3 else float(rng.uniform(5, 25)),
        )
        for i, t in enumerate(rng.integers(25, 347, 2500))
    ]
    stats = SegmentedStats(None, WhereWhenConfig(("city",), 50))
    for start in range(0, len(rows), 113):
        stats.add_rows(rows[start : start + 113], T0)
    table = pd.DataFrame(
        {
            "city": [(r.tags or {})["city"] for r in rows],
            "loss": [abs(r.y_true - r.y_pred) for r in rows],
            "estimate": [r.estimated_error for r in rows],
        }
    )
    values = stats.summary(T0)["segments"]["city"]["values"]
    for city, group in table.groupby("city"):
        # The segment's ring holds its newest 1,000 rows; of them, the newest 300 that had an estimate.
        checked = group.tail(1000).dropna(subset=["estimate"]).tail(300)
        got = values[city]["checked"]
        assert got["rows"] == len(checked) == 300
        assert got["realized_mae"] == pytest.approx(checked["loss"].mean(), rel=1e-9)
        assert got["estimated_mae"] == pytest.approx(checked["estimate"].mean(), rel=1e-9)
        residual_sd = (checked["loss"] - checked["estimate"]).std(ddof=1)
        assert got["band"] == pytest.approx(1.96 * residual_sd / np.sqrt(300), rel=1e-9)


def test_a_segment_without_estimates_has_no_check_and_no_estimate_alert() -> None:
    stats = SegmentedStats(None, WhereWhenConfig(("city",), 50))
    board = Board()
    rows = [MetricRow.of(str(i), 100.0, 130.0, tags={"city": "Lyon"}) for i in range(400)]
    stats.add_rows(rows, T0)
    SegmentAlerts(board, factor=1.5, min_rows=50).check_all(stats, T0)
    assert stats.summary(T0)["segments"]["city"]["values"]["Lyon"]["checked"] is None
    assert not [name for name, _ in board.changes if name.startswith("segment-estimate/")]
