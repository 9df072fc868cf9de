"""The error histogram: its statistics and its PNG. No file I/O: bytes in memory."""

import io
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_BINS = 60


@dataclass(frozen=True)
class ErrorSummary:
    count: int
    mean: float
    median: float

    @classmethod
    def of(cls, errors: np.ndarray) -> "ErrorSummary":
        if errors.size == 0:
            raise ValueError("no errors to summarise")
        return cls(int(errors.size), float(np.mean(errors)), float(np.median(errors)))


def histogram_bins(errors: np.ndarray) -> np.ndarray:
    """Bin edges by numpy's 'auto' rule, capped so a million rows stay readable."""
    edges = np.histogram_bin_edges(errors, bins="auto")
    if len(edges) - 1 > MAX_BINS:
        edges = np.histogram_bin_edges(errors, bins=MAX_BINS)
    return edges


def render_histogram(errors: np.ndarray, *, subtitle: str = "") -> bytes:
    """A PNG histogram of absolute errors with the mean and median as labelled lines."""
    summary = ErrorSummary.of(errors)
    # The object-oriented API, not pyplot: no global figure state, safe off the main thread.
    # Fixed margins rather than a constrained layout, which would draw the figure twice.
    figure = Figure(figsize=(8, 4.5), dpi=100)
    figure.subplots_adjust(left=0.11, right=0.98, bottom=0.12, top=0.87)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    counts, edges = np.histogram(errors, bins=histogram_bins(errors))
    axes.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4C72B0", edgecolor="white")
    axes.axvline(summary.mean, color="#C44E52", linestyle="--", linewidth=2, label=f"mean {summary.mean:.2f}")
    axes.axvline(summary.median, color="#55A868", linestyle="-", linewidth=2, label=f"median {summary.median:.2f}")
    axes.set_xlabel("absolute error |y_true − y_pred|")
    axes.set_ylabel("rows")
    axes.set_title(f"Distribution of absolute errors (n = {summary.count})" + (f"\n{subtitle}" if subtitle else ""))
    axes.legend(loc="upper right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
