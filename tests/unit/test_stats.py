import numpy as np
import pytest

from services.metric_api.join import MetricRow
from services.metric_api.stats import RECENT_ROWS, RunningErrorStats


def random_rows(n: int, seed: int = 0) -> list[MetricRow]:
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(25, 346, n)
    y_pred = y_true + rng.normal(0, 55, n)
    return [
        MetricRow(f"{1669147134 + i}.000000", float(t), float(p), float(abs(t - p)))
        for i, (t, p) in enumerate(zip(y_true, y_pred))
    ]


def test_no_rows_means_no_mae_and_no_rmse() -> None:
    stats = RunningErrorStats()
    assert (stats.count, stats.mae, stats.rmse, stats.last_id) == (0, None, None, None)
    assert stats.last(10) == []


@pytest.mark.parametrize("n", [1, 2, 17, 5000])
def test_count_mae_rmse_equal_numpy(n: int) -> None:
    rows = random_rows(n, seed=n)
    errors = np.array([row.absolute_error for row in rows])
    stats = RunningErrorStats(rows)
    assert stats.count == n
    assert stats.mae == pytest.approx(float(np.mean(errors)), rel=1e-9)
    assert stats.rmse == pytest.approx(float(np.sqrt(np.mean(errors**2))), rel=1e-9)
    assert stats.last_id == rows[-1].id


def test_adding_rows_one_by_one_equals_building_from_all() -> None:
    rows = random_rows(300, seed=1)
    stats = RunningErrorStats()
    for row in rows:
        stats.add(row)
    errors = np.array([row.absolute_error for row in rows])
    assert stats.count == 300
    assert stats.mae == pytest.approx(float(np.mean(errors)), rel=1e-9)
    assert stats.rmse == pytest.approx(float(np.sqrt(np.mean(errors**2))), rel=1e-9)


def test_known_values_by_hand() -> None:
    stats = RunningErrorStats([MetricRow.of("1", 10.0, 13.0), MetricRow.of("2", 10.0, 6.0)])
    assert stats.mae == 3.5  # (3 + 4) / 2
    assert stats.rmse == pytest.approx((12.5) ** 0.5)  # sqrt((9 + 16) / 2)


def test_rmse_is_never_below_mae() -> None:
    stats = RunningErrorStats(random_rows(1000, seed=3))
    assert stats.rmse is not None and stats.mae is not None
    assert stats.rmse >= stats.mae


def test_last_returns_the_newest_rows_oldest_first() -> None:
    rows = random_rows(50, seed=4)
    stats = RunningErrorStats(rows)
    assert stats.last(5) == rows[-5:]
    assert stats.last(1) == [rows[-1]]
    assert stats.last(50) == rows
    assert stats.last(500) == rows


@pytest.mark.parametrize("limit", [0, -1])
def test_last_of_nothing_is_empty(limit: int) -> None:
    assert RunningErrorStats(random_rows(10)).last(limit) == []


def test_the_recent_window_is_bounded_but_totals_cover_every_row() -> None:
    n = RECENT_ROWS + 2500
    rows = random_rows(n, seed=5)
    stats = RunningErrorStats(rows)
    assert len(stats.recent) == RECENT_ROWS
    assert stats.last(n) == rows[-RECENT_ROWS:]
    assert stats.count == n
    errors = np.array([row.absolute_error for row in rows])
    assert stats.mae == pytest.approx(float(np.mean(errors)), rel=1e-9)
    assert stats.rmse == pytest.approx(float(np.sqrt(np.mean(errors**2))), rel=1e-9)
