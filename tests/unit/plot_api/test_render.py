import io
from datetime import UTC, datetime

import matplotlib.image
import numpy as np
import pytest
from matplotlib.text import Text

from services.plot_api.distribution import ErrorDistribution
from services.plot_api.render import (
    DPI,
    FIGSIZE,
    ROLLING_ROWS,
    Chart,
    ErrorOverTimeChart,
    HistogramChart,
    PredVsTrueChart,
    render_histogram,
    rolling_mean,
    stamp,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = FIGSIZE[0] * DPI, FIGSIZE[1] * DPI


def decode_png(data: bytes) -> np.ndarray:
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def texts(chart: Chart) -> list[str]:
    """Every piece of text drawn on the chart's figure (titles, stamp, legend, labels)."""
    return [t.get_text() for t in chart.figure.findobj(Text) if t.get_visible() and t.get_text()]


def distribution_of(errors: np.ndarray) -> ErrorDistribution:
    distribution = ErrorDistribution()
    distribution.add(errors)
    return distribution


def check_png(data: bytes) -> np.ndarray:
    assert data.startswith(PNG_SIGNATURE)
    image = decode_png(data)
    assert image.shape[:2] == (HEIGHT, WIDTH)
    assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 10  # not a blank image
    return image


def test_render_gives_a_landscape_png_that_decodes() -> None:
    check_png(render_histogram(np.random.default_rng(0).exponential(45.0, 2000)))


def test_the_stamp_says_n_window_and_the_newest_rows_time_in_utc() -> None:
    newest = datetime(2026, 11, 23, 14, 10, 5, 250000, tzinfo=UTC).timestamp()
    assert stamp(1234567, "all rows", newest) == "n = 1,234,567 rows · window: all rows · newest row 2026-11-23 14:10:05 UTC"
    assert stamp(3, "the last 3 rows", None).endswith("newest row unknown")


def test_the_histogram_shows_its_stamp_and_the_mean_and_median() -> None:
    chart = HistogramChart()
    check_png(chart.render(distribution_of(np.array([1.0, 2.0, 3.0, 10.0, 4.0])), "n = 5 rows · window: all rows"))
    shown = texts(chart)
    assert "Distribution of absolute errors" in shown
    assert "n = 5 rows · window: all rows" in shown
    assert "mean 4.00" in shown  # (1 + 2 + 3 + 10 + 4) / 5
    assert "median 3.00" in shown


def test_a_reused_chart_shows_only_the_newest_data() -> None:
    chart = HistogramChart()
    first = chart.render(distribution_of(np.full(50, 10.0)), "first")
    second = chart.render(distribution_of(np.array([100.0, 300.0, 200.0])), "second")
    assert first != second
    shown = texts(chart)
    assert "second" in shown and "first" not in shown
    assert "mean 200.00" in shown
    (median,) = [float(t.split()[1]) for t in shown if t.startswith("median ")]
    assert median == pytest.approx(200.0, abs=0.21)  # within the distribution's 0.1 %
    assert "mean 10.00" not in shown
    assert chart.axes.get_xlim()[0] < 100 < 300 < chart.axes.get_xlim()[1]


def test_a_different_stamp_changes_the_picture() -> None:
    errors = np.random.default_rng(2).exponential(45.0, 300)
    assert render_histogram(errors) != render_histogram(errors, stamp="newest row 12:00:00")


@pytest.mark.parametrize(
    "errors",
    [np.array([3.5]), np.zeros(50), np.full(1000, 42.0), np.array([0.0, 1e6])],
    ids=["one-value", "all-zero", "all-equal", "two-far-apart"],
)
def test_degenerate_data_still_renders(errors: np.ndarray) -> None:
    data = render_histogram(errors)
    assert data.startswith(PNG_SIGNATURE)
    assert decode_png(data).shape[1] == WIDTH


def test_an_empty_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="no errors yet"):
        render_histogram(np.array([]))


def test_a_million_values_render() -> None:
    check_png(render_histogram(np.random.default_rng(5).exponential(45.0, 1_000_000)))


def test_rolling_mean_by_hand() -> None:
    values = np.array([2.0, 4.0, 6.0, 8.0, 10.0])
    assert rolling_mean(values, 2).tolist() == [2.0, 3.0, 5.0, 7.0, 9.0]
    assert rolling_mean(values, 3).tolist() == [2.0, 3.0, 4.0, 6.0, 8.0]
    assert rolling_mean(values, 100).tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert rolling_mean(values, 1).tolist() == values.tolist()
    with pytest.raises(ValueError, match="at least one value, not 0"):
        rolling_mean(values, 0)


def test_error_over_time_draws_each_row_and_the_rolling_mean() -> None:
    errors = np.random.default_rng(8).exponential(45.0, 700)
    chart = ErrorOverTimeChart()
    check_png(chart.render(errors, first_row=301, stamp="n = 1,000 rows · window: the last 700 rows"))
    rows, values = np.asarray(chart.points.get_data())
    assert rows[0] == 301 and rows[-1] == 1000
    np.testing.assert_array_equal(values, errors)
    _, trend = np.asarray(chart.trend.get_data())
    assert trend[-1] == pytest.approx(errors[-ROLLING_ROWS:].mean())
    shown = texts(chart)
    assert "n = 1,000 rows · window: the last 700 rows" in shown
    assert f"rolling mean ({ROLLING_ROWS} rows)" in shown
    assert "1000" in shown  # row numbers in full, not as an offset from 1e3
    with pytest.raises(ValueError, match="no errors to draw"):
        chart.render(np.array([]), first_row=1)


def test_pred_vs_true_has_the_identity_line_over_both_ranges() -> None:
    y_true = np.array([30.0, 100.0, 250.0, 340.0])
    y_pred = np.array([-20.0, 120.0, 260.0, 400.0])
    chart = PredVsTrueChart()
    check_png(chart.render(y_true, y_pred, "n = 4 rows · window: the last 4 rows"))
    xs, ys = np.asarray(chart.identity.get_data())
    assert list(xs) == list(ys) == [-20.0, 400.0]
    assert chart.axes.get_xlim() == chart.axes.get_ylim()
    assert "y = x" in texts(chart) and "n = 4 rows · window: the last 4 rows" in texts(chart)
    with pytest.raises(ValueError, match="as many predictions as labels"):
        chart.render(y_true, y_pred[:3])
    check_png(chart.render(np.array([5.0]), np.array([5.0])))  # one point: still a range
    check_png(chart.render(np.array([np.nan, 10.0]), np.array([3.0, np.nan])))  # nothing to place
    chart.render(np.array([np.nan, 10.0, 20.0]), np.array([3.0, 12.0, 18.0]))
    assert chart.axes.get_xlim()[0] < 3.0 and chart.axes.get_xlim()[1] > 20.0
