"""The statistics core, against numbers computed independently with pandas/scikit-learn
(tests/quality.py) from the same rows."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from services.common.metric_rows import MetricRow
from services.metric_api.stats import RECENT_ROWS_SERVED, QualityStats
from tests.quality import FIELDS, differences, expected_window, strict_json

BASELINE = 153.7
T0 = 1_700_000_000.0


def diabetes_like(n: int, seed: int, versions: tuple[str, ...] = ("a",)) -> list[MetricRow]:
    """Rows like the real ones: integer targets 25-346, predictions off by ~50, ts and lag set."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(25, 347, n).astype(float)
    y_pred = y_true + rng.normal(3, 50, n)
    chosen = rng.choice(len(versions), n)
    return [
        MetricRow.of(f"{T0 + i:.6f}", float(t), float(p), model_version=versions[v], ts=T0, lag_s=float(i % 7))
        for i, (t, p, v) in enumerate(zip(y_true, y_pred, chosen, strict=True))
    ]


def frame(rows: list[MetricRow]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "y_true": [r.y_true for r in rows],
            "y_pred": [r.y_pred for r in rows],
            "version": [r.model_version for r in rows],
        }
    )


def feed(stats: QualityStats, rows: list[MetricRow], seed: int, start: float, step_s: float) -> list[float]:
    """Add rows in batches of random sizes (1-500), each at its own time; return each row's time."""
    rng = np.random.default_rng(seed)
    times, i, now = [], 0, start
    while i < len(rows):
        size = int(rng.integers(1, 501))
        batch = rows[i : i + size]
        now += step_s * len(batch)
        stats.add_rows(batch, now)
        times += [now] * len(batch)
        i += size
    return times


def assert_window(actual: dict, rows: pd.DataFrame, baseline: float | None = BASELINE) -> None:
    problems = differences(actual, expected_window(rows, baseline))
    assert not problems, problems


def test_no_rows_means_empty_windows_and_nulls() -> None:
    summary = QualityStats(BASELINE).summary(T0)
    for name in ("all", "last_100", "last_1000", "last_5m"):
        assert summary["windows"][name] == {field: (0 if field == "count" else None) for field in FIELDS}
    assert summary["by_model_version"] == {}
    assert summary["latency"] == summary["lag"] == {"p50_s": None, "p99_s": None}
    assert (summary["last_id"], summary["last_row_at"], summary["rows_per_s"]) == (None, None, 0.0)
    assert QualityStats().last(10) == []


def test_every_window_and_version_equals_pandas_over_many_rows_in_random_batches() -> None:
    rows = diabetes_like(30_000, seed=1, versions=("v1", "v2", "v3"))
    stats = QualityStats(BASELINE)
    # 30,000 rows over 900 s: last_5m is the last third or so.
    times = feed(stats, rows, seed=2, start=T0, step_s=0.03)
    now = times[-1] + 1
    summary = stats.summary(now)
    df = frame(rows)
    df["at"] = times

    assert_window(summary["windows"]["all"], df)
    assert_window(summary["windows"]["last_100"], df.tail(100))
    assert_window(summary["windows"]["last_1000"], df.tail(1000))
    last_5m = df[df["at"] >= now - 300]
    assert 0 < len(last_5m) < len(df)
    assert_window(summary["windows"]["last_5m"], last_5m)
    assert set(summary["by_model_version"]) == {"v1", "v2", "v3"}
    for version, rows_of_version in df.groupby("version"):
        assert_window(summary["by_model_version"][version], rows_of_version)
    assert summary["last_id"] == rows[-1].id
    assert summary["last_row_at"] == times[-1]
    assert summary["rows_per_s"] == (df["at"] >= now - 60).sum() / 60


def test_r2_stays_exact_when_the_labels_vary_little_around_a_large_mean() -> None:
    # Σy² − n·ȳ² would lose every digit here: y ≈ 1e6, variance ≈ 0.08.
    rng = np.random.default_rng(3)
    y_true = 1e6 + rng.uniform(0, 1, 50_000)
    y_pred = y_true + rng.normal(0, 0.1, 50_000)
    rows = [MetricRow.of(str(i), float(t), float(p)) for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True))]
    stats = QualityStats(1e6)
    feed(stats, rows, seed=4, start=T0, step_s=0.001)
    assert_window(stats.summary(T0 + 60)["windows"]["all"], frame(rows), baseline=1e6)


def test_one_row_has_no_r2_and_constant_labels_have_none_either() -> None:
    stats = QualityStats(BASELINE)
    stats.add_rows([MetricRow.of("1", 100.0, 110.0)], T0)
    one = stats.summary(T0)["windows"]["all"]
    assert (one["count"], one["mae"], one["me"], one["r2"], one["p50_ae"], one["max_ae"]) == (1, 10.0, 10.0, None, 10.0, 10.0)
    stats.add_rows([MetricRow.of("2", 100.0, 90.0)], T0)
    assert stats.summary(T0 + 1)["windows"]["all"]["r2"] is None  # y_true constant: no variance to explain


def test_mape_ignores_zero_labels_and_is_null_when_all_are_zero() -> None:
    stats = QualityStats()
    stats.add_rows([MetricRow.of("1", 0.0, 5.0), MetricRow.of("2", 0.0, -3.0)], T0)
    assert stats.summary(T0)["windows"]["all"]["mape"] is None
    stats.add_rows([MetricRow.of("3", 50.0, 60.0), MetricRow.of("4", -20.0, -25.0)], T0)
    assert stats.summary(T0 + 1)["windows"]["all"]["mape"] == pytest.approx((10 / 50 + 5 / 20) / 2, rel=1e-12)


def test_without_a_baseline_baseline_mae_and_skill_are_null() -> None:
    stats = QualityStats(None)
    stats.add_rows(diabetes_like(50, seed=5), T0)
    window = stats.summary(T0)["windows"]["all"]
    assert window["baseline_mae"] is None and window["skill"] is None
    assert window["mae"] is not None


def test_a_perfect_model_has_skill_one_and_a_baseline_that_is_right_has_no_skill() -> None:
    stats = QualityStats(100.0)
    stats.add_rows([MetricRow.of("1", 90.0, 90.0), MetricRow.of("2", 110.0, 110.0)], T0)
    assert stats.summary(T0)["windows"]["all"]["skill"] == 1.0
    constant = QualityStats(100.0)
    constant.add_rows([MetricRow.of("1", 100.0, 120.0)], T0)
    window = constant.summary(T0)["windows"]["all"]
    assert window["baseline_mae"] == 0.0 and window["skill"] is None  # 1 - 20/0 has no value


def test_last_5m_is_capped_at_the_ring_and_last_n_windows_are_exact_through_wrap_around() -> None:
    rows = diabetes_like(5000, seed=6)
    stats = QualityStats(BASELINE, ring_rows=1500)
    feed(stats, rows, seed=7, start=T0, step_s=0.001)  # all within 5 s
    summary = stats.summary(T0 + 10)
    df = frame(rows)
    assert_window(summary["windows"]["last_100"], df.tail(100))
    assert_window(summary["windows"]["last_1000"], df.tail(1000))
    assert_window(summary["windows"]["last_5m"], df.tail(1500))
    assert_window(summary["windows"]["all"], df)


def test_rows_older_than_five_minutes_leave_last_5m_but_stay_in_all() -> None:
    rows = diabetes_like(200, seed=8)
    stats = QualityStats(BASELINE)
    stats.add_rows(rows[:150], T0)
    stats.add_rows(rows[150:], T0 + 200)
    df = frame(rows)
    assert_window(stats.summary(T0 + 299)["windows"]["last_5m"], df)
    assert_window(stats.summary(T0 + 301)["windows"]["last_5m"], df.tail(50))
    assert stats.summary(T0 + 501)["windows"]["last_5m"]["count"] == 0
    assert_window(stats.summary(T0 + 501)["windows"]["all"], df)


def test_rebuilding_from_history_equals_having_seen_the_rows_live() -> None:
    rows = diabetes_like(4000, seed=9, versions=("old", "new"))
    live = QualityStats(BASELINE)
    times = feed(live, rows, seed=10, start=T0, step_s=0.15)  # 600 s: last_5m is about half
    now = times[-1] + 1

    rebuilt = QualityStats(BASELINE)
    for start in range(0, len(rows), 1000):  # as read from the CSV, without versions or times
        rebuilt.add_history([MetricRow.of(r.id, r.y_true, r.y_pred) for r in rows[start : start + 1000]])
    shuffled = list(rows)
    np.random.default_rng(11).shuffle(shuffled)  # as read from the state: in no set order
    for version in ("old", "new"):
        mine = [r for r in shuffled if r.model_version == version]
        rebuilt.add_version_rows(version, np.array([r.y_true for r in mine]), np.array([r.y_pred for r in mine]))
    rebuilt.set_times_of_last(times[-3000:])

    got, want = rebuilt.summary(now), live.summary(now)
    for name, window in want["windows"].items():
        assert not differences(got["windows"][name], window, rel=1e-12), name
    assert got["by_model_version"].keys() == want["by_model_version"].keys()
    for version, window in want["by_model_version"].items():
        assert not differences(got["by_model_version"][version], window, rel=1e-12), version
    assert (got["last_id"], got["last_row_at"], got["rows_per_s"]) == (want["last_id"], want["last_row_at"], want["rows_per_s"])
    assert rebuilt.last(RECENT_ROWS_SERVED) == live.last(RECENT_ROWS_SERVED)


def test_latency_and_lag_percentiles_are_over_the_newest_samples() -> None:
    rows = [MetricRow.of(str(i), 100.0, 101.0, ts=T0 - 0.001 * i, lag_s=0.5 * (i % 13)) for i in range(300)] + [
        MetricRow.of("no-ts", 1.0, 2.0)
    ]
    stats = QualityStats(timing_samples=250)
    stats.add_rows(rows, T0)
    summary = stats.summary(T0)
    latencies = np.array([T0 - r.ts for r in rows if r.ts is not None])[-250:]
    lags = np.array([r.lag_s for r in rows if r.lag_s is not None])[-250:]
    assert summary["latency"]["p50_s"] == pytest.approx(np.percentile(latencies, 50), rel=1e-9)
    assert summary["latency"]["p99_s"] == pytest.approx(np.percentile(latencies, 99), rel=1e-9)
    assert summary["lag"]["p50_s"] == pytest.approx(np.percentile(lags, 50), rel=1e-9)
    assert summary["lag"]["p99_s"] == pytest.approx(np.percentile(lags, 99), rel=1e-9)


def test_the_summary_has_no_nan_even_in_odd_cases() -> None:
    stats = QualityStats(0.0)
    stats.add_rows([MetricRow.of("1", 0.0, 0.0)], T0)  # zero error, zero label, zero baseline
    strict_json(json.dumps(stats.summary(T0)))
    stats.add_rows([MetricRow.of("2", 0.0, 0.0)], T0)
    strict_json(json.dumps(stats.summary(T0 + 1)))


def test_recent_mae_is_that_of_the_newest_rows() -> None:
    rows = diabetes_like(500, seed=12)
    stats = QualityStats()
    feed(stats, rows, seed=13, start=T0, step_s=0.01)
    errors = np.array([r.absolute_error for r in rows])
    assert stats.recent_mae(100) == pytest.approx(errors[-100:].mean(), rel=1e-12)
    assert QualityStats().recent_mae(100) is None


# --- /metrics/recent's rows, as before ------------------------------------------------


def test_last_returns_the_newest_rows_oldest_first_and_is_bounded() -> None:
    rows = diabetes_like(RECENT_ROWS_SERVED + 500, seed=15)
    stats = QualityStats()
    feed(stats, rows, seed=16, start=T0, step_s=0.01)
    assert stats.last(5) == rows[-5:]
    assert stats.last(1) == [rows[-1]]
    assert stats.last(10**6) == rows[-RECENT_ROWS_SERVED:]
    assert stats.last(0) == stats.last(-1) == []
    assert stats.count == len(rows)
    assert math.isclose(stats.mae or 0, np.mean([r.absolute_error for r in rows]), rel_tol=1e-12)


def test_rows_of_an_older_csv_too_absurd_for_the_statistics_are_left_out_and_counted() -> None:
    """An older release wrote rows with |e| = inf or 1e300s: they must not make every number null for good."""
    good = [MetricRow.of("1.000001", 100.0, 110.0), MetricRow.of("1.000004", 100.0, 90.0)]
    absurd = [MetricRow.of("1.000002", 1.7e308, -1.7e308), MetricRow.of("1.000003", 1e300, 1.0)]
    stats = QualityStats(BASELINE)
    stats.add_history([good[0], *absurd, good[1]])
    stats.add_version_rows("v1", np.array([100.0, 1.7e308, 1e300, 100.0]), np.array([110.0, -1.7e308, 1.0, 90.0]))
    summary = stats.summary(T0)
    expected = {"count": 2, "mae": 10.0, "rmse": 10.0, "me": 0.0, "max_ae": 10.0}
    for window in (summary["windows"]["all"], summary["windows"]["last_100"], summary["by_model_version"]["v1"]):
        assert {name: window[name] for name in expected} == expected
    assert summary["excluded_rows"] == 2
    assert [row.id for row in stats.last(10)] == ["1.000001", "1.000004"]
    assert stats.recent_mae(100) == 10.0
