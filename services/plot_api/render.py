"""Drawing the charts (the registry, charts.py, says which there are). No file I/O: arrays in, bytes out.

Each chart owns one matplotlib figure, built once; a render only updates the data of its
artists and draws again. The object-oriented API, not pyplot: no global figure state, safe off
the main thread (one render at a time per chart). Fixed margins rather than a constrained
layout, which would draw the figure twice.
"""

import io
from datetime import UTC, datetime

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from services.plot_api.distribution import ErrorDistribution

MAX_BINS = 60
ROLLING_ROWS = 100  # the rolling mean of the error-over-time chart
FIGSIZE = (8, 4.5)
DPI = 100
# zlib level 1: about a third of the encoding time of the default 6, for a slightly larger PNG
# (the bytes are served from memory, so their size hardly matters).
PNG_OPTIONS = {"compress_level": 1}
BLUE, RED, GREEN, GREY = "#4C72B0", "#C44E52", "#55A868", "#555555"


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each value and the up to ``window - 1`` before it (shorter at the start)."""
    if window < 1:
        raise ValueError(f"a rolling window needs at least one value, not {window}")
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(0, ends - window)
    means: np.ndarray = (sums[ends] - sums[starts]) / (ends - starts)
    return means


def _padded(low: float, high: float) -> tuple[float, float]:
    """Axis limits around [low, high] with a 3 % margin, never an empty range."""
    if not high > low:
        low, high = low - 0.5, high + 0.5
    margin = (high - low) * 0.03
    return low - margin, high + margin


def stamp(count: int, window: str, newest: float | None) -> str:
    """What a chart shows and how fresh it is: n, the window, the newest row's time (UTC)."""
    when = "unknown" if newest is None else f"{datetime.fromtimestamp(newest, UTC):%Y-%m-%d %H:%M:%S} UTC"
    return f"n = {count:,} rows · window: {window} · newest row {when}"


class Chart:
    """One figure with fixed margins, a headline and a stamp line; ``png()`` draws and encodes it."""

    def __init__(self, xlabel: str, ylabel: str) -> None:
        self.figure = Figure(figsize=FIGSIZE, dpi=DPI)
        self.figure.subplots_adjust(left=0.11, right=0.98, bottom=0.12, top=0.87)
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_subplot()
        self.axes.set_xlabel(xlabel)
        self.axes.set_ylabel(ylabel)
        self.headline = self.figure.text(0.5, 0.975, "", ha="center", va="top", fontsize=12)
        self.stamp = self.figure.text(0.5, 0.915, "", ha="center", va="top", fontsize=9, color=GREY)

    def png(self, xlim: tuple[float, float], ylim: tuple[float, float], headline: str, stamp: str) -> bytes:
        """Set the limits and titles, draw, and encode as PNG."""
        self.axes.set_xlim(*xlim)
        self.axes.set_ylim(*ylim)
        self.headline.set_text(headline)
        self.stamp.set_text(stamp)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", pil_kwargs=PNG_OPTIONS)
        return buffer.getvalue()


class HistogramChart(Chart):
    """The distribution of absolute errors with the mean and median as labelled lines."""

    def __init__(self) -> None:
        super().__init__("absolute error |y_true − y_pred|", "rows")
        self.bars = self.axes.stairs([0.0], [0.0, 1.0], fill=True, color=BLUE)
        self.mean_line = self.axes.axvline(0.0, color=RED, linestyle="--", linewidth=2, label="mean")
        self.median_line = self.axes.axvline(0.0, color=GREEN, linestyle="-", linewidth=2, label="median")
        self.legend = self.axes.legend(loc="upper right")

    def render(self, errors: ErrorDistribution, stamp: str = "") -> bytes:
        counts, edges = errors.histogram(MAX_BINS)
        mean, median = errors.mean, errors.median
        self.bars.set_data(counts, edges)
        self.mean_line.set_xdata([mean, mean])
        self.median_line.set_xdata([median, median])
        labels = (f"mean {mean:.2f}", f"median {median:.2f}")
        for line, text, label in zip((self.mean_line, self.median_line), self.legend.get_texts(), labels, strict=True):
            line.set_label(label)
            text.set_text(label)
        xlim, ylim = _padded(float(edges[0]), float(edges[-1])), (0, max(1, int(counts.max())) * 1.05)
        return self.png(xlim, ylim, "Distribution of absolute errors", stamp)


class ErrorOverTimeChart(Chart):
    """The absolute error of each recent row, in arrival order, with its rolling mean."""

    def __init__(self) -> None:
        super().__init__("row number (in the order rows were logged)", "absolute error")
        (self.points,) = self.axes.plot([], [], linestyle="none", marker=".", markersize=3, alpha=0.35, color=BLUE, label="row")
        (self.trend,) = self.axes.plot([], [], color=RED, linewidth=2, label=f"rolling mean ({ROLLING_ROWS} rows)")
        self.legend = self.axes.legend(loc="upper left")
        self.axes.ticklabel_format(axis="x", style="plain", useOffset=False)

    def render(self, errors: np.ndarray, first_row: int, stamp: str = "") -> bytes:
        """``errors`` are rows ``first_row``, ``first_row + 1``, ... (numbered from 1)."""
        if errors.size == 0:
            raise ValueError("no errors to draw")
        rows = np.arange(first_row, first_row + errors.size)
        self.points.set_data(rows, errors)
        self.trend.set_data(rows, rolling_mean(errors, ROLLING_ROWS))
        xlim, ylim = _padded(float(rows[0]), float(rows[-1])), (0, max(float(errors.max()), 1e-9) * 1.05)
        return self.png(xlim, ylim, "Absolute error per row, and its rolling mean", stamp)


class PredVsTrueChart(Chart):
    """Predictions against labels for recent rows; a perfect model lies on y = x."""

    def __init__(self) -> None:
        super().__init__("y_true", "y_pred")
        (self.points,) = self.axes.plot([], [], linestyle="none", marker="o", markersize=2.5, alpha=0.35, color=BLUE, label="row")
        (self.identity,) = self.axes.plot([], [], color=GREY, linestyle="--", linewidth=1.5, label="y = x")
        self.legend = self.axes.legend(loc="upper left")

    def render(self, y_true: np.ndarray, y_pred: np.ndarray, stamp: str = "") -> bytes:
        if y_true.size == 0 or y_true.shape != y_pred.shape:
            raise ValueError(f"need as many predictions as labels, and some: {y_true.shape} vs {y_pred.shape}")
        both = np.concatenate([y_true, y_pred])
        both = both[np.isfinite(both)]  # a point with a missing value is not drawn
        low, high = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        self.points.set_data(y_true, y_pred)
        self.identity.set_data([low, high], [low, high])
        limits = _padded(low, high)
        return self.png(limits, limits, "Prediction against label", stamp)


class EstimateChart(Chart):
    """The estimated MAE of the recent predictions (labelled or not) with its band, and the realized
    MAE of the recent joined rows beside the estimated MAE of the same rows, over time (issue 24)."""

    def __init__(self) -> None:
        super().__init__("minutes before the newest look (its time is above)", "MAE")
        self.band = self.axes.fill_between([], [], [], color=BLUE, alpha=0.15, linewidth=0)
        (self.estimated,) = self.axes.plot([], [], color=BLUE, linewidth=2, label="estimated MAE, last 300 predictions (band)")
        (self.realized,) = self.axes.plot([], [], color=RED, linewidth=2, label="realized MAE, last 300 joined rows")
        (self.same_ids,) = self.axes.plot(
            [], [], color=BLUE, linestyle="--", linewidth=1.5, label="estimated MAE of those same rows"
        )
        self.legend = self.axes.legend(loc="upper left", fontsize=8)

    def render(self, times: np.ndarray, columns: dict[str, np.ndarray], stamp: str = "") -> bytes:
        """``times`` in epoch seconds; ``columns`` estimated, band, realized, estimated_joined (NaN where unknown)."""
        if times.size == 0:
            raise ValueError("no points to draw")
        x = (times - times[-1]) / 60.0
        estimated, band = columns["estimated"], np.nan_to_num(columns["band"])
        self.band.remove()
        self.band = self.axes.fill_between(x, estimated - band, estimated + band, color=BLUE, alpha=0.15, linewidth=0)
        self.estimated.set_data(x, estimated)
        self.realized.set_data(x, columns["realized"])
        self.same_ids.set_data(x, columns["estimated_joined"])
        values = np.concatenate([estimated + band, columns["realized"], columns["estimated_joined"]])
        values = values[np.isfinite(values)]
        top = max(float(values.max()), 1e-9) * 1.15 if values.size else 1.0
        low = min(float(x[0]), -1.0)  # at least the last minute, so that the first points are not a wall
        return self.png((low, 0.0), (0, top), "Estimated MAE before the labels, realized MAE once they come", stamp)


def render_histogram(errors: np.ndarray, *, stamp: str = "") -> bytes:
    """A one-off histogram PNG (a fresh figure); the service keeps one ``HistogramChart``."""
    distribution = ErrorDistribution()
    distribution.add(errors)
    return HistogramChart().render(distribution, stamp)
