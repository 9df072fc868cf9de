"""The windows of a stream of rows: the lazily sorted |e| values, the ring of the newest rows and
their join times, and the windows as plot_api keeps them over the shards' rows (read back, times unknown)."""

import numpy as np
import pytest

from services.common.metric_rows import MetricRow
from services.common.row_windows import LazilySortedArray, RowRing, RowWindows

T0 = 1_700_000_000.0


def test_the_lazily_sorted_array_holds_every_value_in_order() -> None:
    rng = np.random.default_rng(14)
    array, every = LazilySortedArray(), []
    for size in (1, 0, 7, 3000, 2, 500):
        batch = rng.normal(0, 1, size)
        array.extend(batch)
        every += batch.tolist()
        if size % 2:
            assert np.array_equal(array.sorted(), np.sort(every))
    assert np.array_equal(array.sorted(), np.sort(every))


def ring_of(values: list[float], capacity: int) -> RowRing:
    ring = RowRing(capacity)
    ring.extend(np.array(values), np.array(values), np.full(len(values), np.nan))
    return ring


def test_times_given_for_an_empty_ring_change_nothing() -> None:
    ring = RowRing(4)
    ring.set_times_of_last(np.array([T0, T0 + 1]))  # raised ValueError (shape mismatch) before
    assert len(ring) == 0 and [len(column) for column in ring.last(4)] == [0, 0, 0]


def test_times_are_set_on_the_newest_rows_oldest_first_the_newest_times_when_more() -> None:
    ring = ring_of([1.0, 2.0, 3.0, 4.0, 5.0], capacity=4)  # wrapped: holds 2, 3, 4, 5
    ring.set_times_of_last(np.array([T0 + 4, T0 + 5]))
    assert np.array_equal(ring.last(4)[2], [np.nan, np.nan, T0 + 4, T0 + 5], equal_nan=True)
    ring.set_times_of_last(np.arange(6) + T0)  # six times for four rows: the newest four
    assert ring.last(4)[2].tolist() == [T0 + 2, T0 + 3, T0 + 4, T0 + 5]


def test_rows_read_back_make_every_window_but_last_5m_whose_rows_have_no_time() -> None:
    rows = [MetricRow.of(f"{T0 + i:.6f}", 100.0, 100.0 + i % 7) for i in range(150)]
    windows = RowWindows()
    windows.add_history(rows[:100])
    windows.add_history([*rows[100:], MetricRow.of("x", float("inf"), 1.0)])
    summary = windows.summary(T0)
    errors = np.array([row.absolute_error for row in rows])
    assert summary["windows"]["all"]["count"] == 150 and summary["windows"]["all"]["mae"] == pytest.approx(errors.mean())
    assert summary["windows"]["last_100"]["mae"] == pytest.approx(errors[-100:].mean())
    assert summary["windows"]["last_5m"]["count"] == 0 and summary["rows_per_s"] == 0.0
    assert (summary["last_id"], summary["excluded_rows"]) == (rows[-1].id, 1)
