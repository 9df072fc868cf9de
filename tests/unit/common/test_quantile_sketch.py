"""The bounded percentiles of a population: exact (numpy's) up to ``exact_rows`` rows, then a quantile
sketch within its stated relative accuracy of numpy's on the same rows, in bounded memory, saved and
loaded by the snapshots so that the summary comes back the same. Expected values are numpy's."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from services.common.contracts.summary import JOIN_COUNTS, Summary
from services.common.metric_rows import MetricRow
from services.common.quantile_sketch import MAX_BINS, RELATIVE_ACCURACY, QuantileSketch
from services.common.row_windows import ErrorHistory, RowWindows
from services.common.settings import Settings
from services.common.snapshots import (
    Snapshot,
    SnapshotUnusable,
    load_history,
    load_windows,
    read_snapshot,
    save_history,
    save_windows,
    write_snapshot,
)
from services.metric_api.monitor import QualityMonitor
from services.metric_api.segments import SegmentBook, SegmentStats
from services.metric_api.stats import QualityStats
from services.plot_api.merged_summary import SKETCHED_ALL, ShardSummary, merge_summaries

T0 = 1_700_000_000.0
QS = (50, 90, 95)
Errors = Callable[[np.random.Generator, int], np.ndarray]

# |e| of several shapes: y_pred = y_true + (a signed error of that size)
DISTRIBUTIONS: dict[str, Errors] = {
    "normal": lambda rng, n: rng.normal(0, 50, n),
    "lognormal heavy tail": lambda rng, n: rng.lognormal(0, 3, n) * rng.choice([-1, 1], n),
    "pareto heavy tail": lambda rng, n: rng.pareto(0.8, n),
    "a third exact (|e| = 0)": lambda rng, n: np.where(rng.random(n) < 1 / 3, 0.0, rng.exponential(10, n)),
    "most exact (p50 = 0)": lambda rng, n: np.where(rng.random(n) < 0.7, 0.0, rng.exponential(10, n)),
    "all exact": lambda _rng, n: np.zeros(n),
    "one value": lambda _rng, n: np.full(n, 3.25),
    "tiny and huge": lambda rng, n: 10.0 ** rng.uniform(-12, 8, n),
    "integers": lambda rng, n: rng.integers(0, 5, n).astype(float),
}


def fed(history: ErrorHistory, errors: np.ndarray, y_true: np.ndarray, batch: int = 1000) -> None:
    for start in range(0, len(errors), batch):
        y = y_true[start : start + batch]
        history.add(y, y + errors[start : start + batch])


def population(name: str, n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(25, 350, n).round()
    errors = DISTRIBUTIONS[name](rng, n)
    return y_true, errors


def assert_within_accuracy(window: dict[str, float | int | None], absolute_errors: np.ndarray) -> None:
    for q, name in zip(QS, ("p50_ae", "p90_ae", "p95_ae"), strict=True):
        exact = float(np.percentile(absolute_errors, q))
        got = window[name]
        assert isinstance(got, float)
        assert abs(got - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9), (name, got, exact)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_below_the_threshold_the_percentiles_are_numpys_exactly(name: str) -> None:
    y_true, errors = population(name, 5000)
    history = ErrorHistory(None, exact_rows=5000)
    fed(history, errors, y_true, batch=700)
    absolute_errors = np.abs((y_true + errors) - y_true)
    window = history.window()
    assert not history.approximate
    assert [window["p50_ae"], window["p90_ae"], window["p95_ae"]] == [float(np.percentile(absolute_errors, q)) for q in QS]
    assert window["max_ae"] == float(absolute_errors.max())


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_above_the_threshold_the_percentiles_are_within_the_stated_accuracy_and_the_max_exact(name: str) -> None:
    y_true, errors = population(name, 60_000)
    history = ErrorHistory(None, exact_rows=10_000)
    fed(history, errors, y_true)
    absolute_errors = np.abs((y_true + errors) - y_true)
    window = history.window()
    assert history.approximate and history.absolute_errors is None  # the exact values were freed
    assert window["count"] == 60_000
    assert window["max_ae"] == float(absolute_errors.max())
    assert window["mae"] == pytest.approx(float(absolute_errors.mean()), rel=1e-12)  # the sums stay exact
    assert_within_accuracy(window, absolute_errors)


def test_the_sketch_alone_is_within_its_accuracy_at_every_percentile_and_at_0_and_100() -> None:
    rng = np.random.default_rng(3)
    values = np.abs(rng.standard_cauchy(100_001))
    sketch = QuantileSketch()
    for start in range(0, len(values), 4096):
        sketch.add(values[start : start + 4096])
    qs = tuple(float(q) for q in range(101))
    for q, got in zip(qs, sketch.percentiles(qs), strict=True):
        exact = float(np.percentile(values, q))
        assert abs(got - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9), (q, got, exact)


def test_a_population_fed_2_000_000_rows_holds_at_most_32_kib_once_sketched() -> None:
    rng = np.random.default_rng(11)
    history = ErrorHistory(None, exact_rows=100_000)
    sizes = []
    for _batch in range(2000):
        y_true = rng.uniform(25, 350, 1000)
        history.add(y_true, y_true + rng.lognormal(3, 1.5, 1000))
        sizes.append(history.nbytes())
    assert history.count == 2_000_000 and history.approximate
    assert max(sizes[:100]) <= 2 * 100_000 * 8  # exact: 8 bytes a row (the array's capacity doubles)
    assert max(sizes[101:]) == MAX_BINS * 8 == 32_768  # the sketch: the same from 101,000 rows to 2,000,000
    assert sizes[-1] == sizes[101]


def test_a_sketched_populations_snapshot_gives_the_same_summary(tmp_path: Path) -> None:
    def windows_of(rows: int, exact_rows: int) -> RowWindows:
        rng = np.random.default_rng(5)
        windows = RowWindows(150.0, ring_rows=2000, exact_rows=exact_rows)
        y_true = rng.uniform(25, 350, rows).round()
        y_pred = y_true + np.where(rng.random(rows) < 0.2, 0.0, rng.lognormal(2, 2, rows))
        for start in range(0, rows, 1000):
            batch = [
                MetricRow.of(f"{T0 + i:.6f}", float(y_true[i]), float(y_pred[i])) for i in range(start, min(rows, start + 1000))
            ]
            windows.take(batch, T0 + start)
        return windows

    windows = windows_of(30_000, exact_rows=8000)
    assert windows.all.approximate
    snapshot = Snapshot({})
    save_windows(windows, snapshot)
    write_snapshot(tmp_path / "s", 1, snapshot)
    again = RowWindows(150.0, ring_rows=2000, exact_rows=8000)
    load_windows(again, read_snapshot(tmp_path / "s", 1))
    assert again.all.approximate
    assert again.summary(T0 + 30_000) == windows.summary(T0 + 30_000)
    assert windows.summary(T0)["approximate"] == ["windows.all"]
    # More rows after the load go on as in the original.
    more = [MetricRow.of(f"{T0 + 10**6 + i:.6f}", 100.0, 100.0 + i) for i in range(500)]
    windows.take(more, T0)
    again.take(more, T0)
    assert again.summary(T0 + 30_000) == windows.summary(T0 + 30_000)


def test_an_exact_snapshot_beyond_the_threshold_loads_sketched_and_a_damaged_sketch_is_refused() -> None:
    y_true, errors = population("lognormal heavy tail", 20_000)
    exact = ErrorHistory(None, exact_rows=1_000_000)
    fed(exact, errors, y_true)
    snapshot = Snapshot({})
    save_history(exact, "all", snapshot)  # as a release before sketches saved it
    loaded = load_history(None, "all", snapshot, exact_rows=5000)
    assert loaded.approximate
    assert_within_accuracy(loaded.window(), np.abs((y_true + errors) - y_true))

    sketched = Snapshot({})
    save_history(loaded, "all", sketched)
    assert len(sketched.arrays["all.ae"]) == 0  # an older release refuses it (0 errors for 20,000 rows)
    sketched.meta["all"]["sketch"]["count"] += 1
    with pytest.raises(SnapshotUnusable, match="sketch"):
        load_history(None, "all", sketched, exact_rows=5000)


def test_merged_sketches_read_as_one_sketch_of_every_value() -> None:
    rng = np.random.default_rng(2)
    small, large = rng.exponential(1e-3, 30_000), rng.exponential(1e6, 30_000)
    a, b, both = QuantileSketch(), QuantileSketch(), QuantileSketch()
    a.add(small)
    b.add(large)
    both.add(np.concatenate((small, large)))
    a.merge(b)
    assert (a.count, a.max, a.offset) == (both.count, both.max, both.offset)
    assert np.array_equal(a.bins, both.bins)
    assert a.percentiles(QS) == both.percentiles(QS)


def test_a_sketched_segment_folded_into_other_counts_every_row_within_the_accuracy() -> None:
    rng = np.random.default_rng(9)
    tracked, other = SegmentStats(None, exact_rows=1000), SegmentStats(None, exact_rows=1000)
    everything = []
    for segment, rows in ((tracked, 5000), (other, 300)):
        y_true = rng.uniform(25, 350, rows)
        errors = rng.normal(0, 40, rows)
        segment.add(y_true, y_true + errors, np.full(rows, np.nan))
        everything.append(np.abs((y_true + errors) - y_true))
    assert (tracked.all.approximate, other.all.approximate) == (True, False)
    tracked.fold_into(other)
    window = other.windows()["all"]
    assert other.all.approximate and window["count"] == 5300
    assert window["max_ae"] == float(np.concatenate(everything).max())
    assert_within_accuracy(window, np.concatenate(everything))
    assert other.nbytes() == 3 * 8 * 1000 + 32_768


def test_the_summary_names_the_windows_whose_percentiles_are_approximate() -> None:
    stats = QualityStats(None, ring_rows=1000, exact_rows=2000)
    rows = [MetricRow.of(f"{T0 + i:.6f}", 100.0, 100.0 + i % 7, "v1" if i < 2500 else "v2") for i in range(3000)]
    for start in range(0, len(rows), 500):
        stats.add_rows(rows[start : start + 500], T0)
    assert stats.summary(T0)["approximate"] == ["windows.all", "by_model_version.v1"]

    book = SegmentBook(("country",), values_max=5, baseline=None, exact_rows=2000)
    tagged = [MetricRow.of(f"{T0 + i:.6f}", 100.0, 101.0, tags={"country": "FR" if i < 2100 else "DE"}) for i in range(2500)]
    book.add(tagged, np.full(2500, 100.0), np.full(2500, 101.0))
    assert book.approximate() == ["segments.country.FR.all"]


def test_metric_apis_summary_and_plot_apis_merged_summary_say_which_percentiles_are_approximate() -> None:
    rows = [MetricRow.of(f"{T0 + i:.6f}", 100.0, 100.0 + (i % 13) * 0.5, "v1") for i in range(1200)]
    monitor = QualityMonitor(Settings(BASELINE_MEAN=150.0, ALL_EXACT_ROWS=1000))
    monitor.add_rows(rows[:1000], T0)
    exact = Summary.model_validate_json(monitor.summary(dict.fromkeys(JOIN_COUNTS, 0), "metric_log.csv", T0))
    assert exact.approximate == []
    monitor.add_rows(rows[1000:], T0)
    shard = Summary.model_validate_json(monitor.summary(dict.fromkeys(JOIN_COUNTS, 0), "metric_log.csv", T0))
    assert shard.approximate == ["windows.all", "by_model_version.v1"]
    p50 = float(np.percentile([(i % 13) * 0.5 for i in range(1200)], 50))
    assert shard.windows.all.p50_ae == pytest.approx(p50, rel=RELATIVE_ACCURACY)

    for exact_rows, said in ((5000, False), (1000, True)):
        union = RowWindows(exact_rows=exact_rows)
        union.add_history(rows)
        merged = merge_summaries([ShardSummary("http://s0", shard)], union.summary(T0))
        assert (SKETCHED_ALL in merged.approximate) is said
