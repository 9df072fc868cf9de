"""The chart registry: every chart plot_api draws, serves, writes and shows, in one place.

A chart is a drawing class in ``render.py`` (arrays in, PNG bytes out; the drift chart's is in
``drift_chart.py``) plus one entry in ``CHARTS`` below. The route ``GET /plot/{image}``, the file under LOGS_DIR, the refresh
schedule, the dashboard's figures, the ``plot_chart_render_seconds{chart=...}`` label and the
tests all read the registry, so nothing else changes when a chart is added.
"""

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import numpy as np

from services.common.contracts.drift import DriftReport
from services.plot_api.distribution import ErrorDistribution
from services.plot_api.drift_chart import DriftChart
from services.plot_api.estimate_history import EstimateHistory
from services.plot_api.render import ErrorOverTimeChart, EstimateChart, HistogramChart, PredVsTrueChart, stamp
from services.plot_api.tail import MetricLogTail

PLOT_ROUTE = "/plot/"  # every chart's URL is PLOT_ROUTE + one path segment


class Window(Enum):
    """Which rows a chart draws from. It also sets how often a refresh redraws the chart:
    an every-row chart whenever new rows came; the last-rows charts take turns, at most one a
    refresh after the first, so a refresh stays within its time budget however many there are."""

    ALL = "every row"
    RECENT = "the last rows"
    # Not the metric log: model_api's drift report (GET /drift), drawn whenever it changed.
    DRIFT = "model_api's drift window"
    # Not the metric log: metric_api's estimate (its summary) sampled at each refresh, drawn whenever it moved.
    ESTIMATE = "metric_api's estimate over time"


LOG_WINDOWS = frozenset({Window.ALL, Window.RECENT})  # the windows drawn from the metric log


@dataclass(frozen=True)
class AllRows:
    """What an every-row chart draws from: the distribution of every absolute error."""

    distribution: ErrorDistribution
    stamp: str  # n, the window and the newest row's time, for the chart's subtitle


@dataclass(frozen=True)
class RecentRows:
    """What a last-rows chart draws from: the last rows in full, oldest first."""

    y_true: np.ndarray
    y_pred: np.ndarray
    errors: np.ndarray  # absolute errors
    first_row: int  # the number (from 1, in the order rows were logged) of the oldest of them
    stamp: str


@dataclass(frozen=True)
class DriftRows:
    """What a drift chart draws from: model_api's drift report."""

    report: DriftReport
    stamp: str

    @classmethod
    def of(cls, report: DriftReport) -> "DriftRows":
        window = report.window
        when = "none yet" if window.until is None else f"{datetime.fromtimestamp(window.until, UTC):%Y-%m-%d %H:%M:%S} UTC"
        last = f"the last {window.size:,} samples of {window.max_age_s:g} s"
        stamp = f"n = {window.count:,} samples · window: {last} · newest {when} · model {report.model_version}"
        return cls(report, stamp)

    @property
    def version(self) -> int:
        """Changes when the report does: a drift chart is drawn again only then."""
        window = self.report.window
        return hash((self.report.model_version, self.report.status, window.seen, window.count, window.since))


@dataclass(frozen=True)
class EstimateRows:
    """What the estimate chart draws from: the history of the estimated and realized MAE (issue 24)."""

    times: np.ndarray
    columns: dict[str, np.ndarray]
    stamp: str
    version: int

    @classmethod
    def of(cls, history: EstimateHistory) -> "EstimateRows | None":
        model, points = history.points()
        if not points:
            return None

        def column(name: str) -> np.ndarray:
            return np.array([math.nan if (v := getattr(p, name)) is None else v for p in points], dtype=float)

        names = ("estimated", "band", "realized", "estimated_joined")
        newest = f"{datetime.fromtimestamp(points[-1].at, UTC):%Y-%m-%d %H:%M:%S} UTC"
        stamp = f"n = {len(points):,} looks at metric_api · model {model} · newest {newest}"
        return cls(np.array([p.at for p in points]), {name: column(name) for name in names}, stamp, history.version)


def rows_for(window: Window, tail: MetricLogTail) -> AllRows | RecentRows:
    """The rows as the tail holds them now, in the shape a chart of ``window`` (one of LOG_WINDOWS) draws from."""
    newest = tail.newest_row_time()
    if window is Window.ALL:
        return AllRows(tail.distribution, stamp(tail.count, "all rows", newest))
    y_true, y_pred, errors = tail.recent_rows()
    return RecentRows(y_true, y_pred, errors, tail.first_recent_row, stamp(tail.count, f"the last {errors.size:,} rows", newest))


def _no_figure() -> None:
    return None


@dataclass(frozen=True)
class ChartSpec:
    """One chart: what it is called, where it is served and written, what it shows, and how to draw it."""

    name: str  # the dashboard element's id and the chart label of plot_chart_render_seconds
    url: str  # PLOT_ROUTE + one segment, e.g. /plot/latest.png
    file: str  # the PNG under LOGS_DIR
    window: Window
    caption: str  # what it shows, for the dashboard (alt text) and the OpenAPI docs
    # draw(figure, rows) -> PNG bytes, rows being AllRows, RecentRows or DriftRows as ``window`` says.
    # ``figure()`` builds what a render reuses (render.py's chart classes keep one matplotlib
    # figure each); the service calls it once per chart, and no two renders of a chart overlap.
    draw: Callable[[Any, Any], bytes]
    figure: Callable[[], Any] = field(default=_no_figure)

    @property
    def image(self) -> str:
        """The last segment of the URL: the value of the route's ``image`` parameter."""
        return self.url.removeprefix(PLOT_ROUTE)

    def describe(self) -> str:
        return f"`{self.url}`: {self.caption}, over {self.window.value} (also `LOGS_DIR/{self.file}`)"


Charts = Mapping[str, ChartSpec]  # a registry: the charts by name, in the dashboard's order


def registry(*charts: ChartSpec) -> Charts:
    """The charts by name, in the order given (the dashboard's order); refuses clashes."""
    for chart in charts:
        if not chart.url.startswith(PLOT_ROUTE) or not chart.image or "/" in chart.image:
            raise ValueError(f"chart {chart.name!r}: its URL {chart.url!r} must be {PLOT_ROUTE}<one segment>")
        if not chart.name.isidentifier():
            raise ValueError(f"chart {chart.name!r}: the name is an element id and a metric label, so a plain identifier")
    for what in ("name", "url", "file"):
        values = [getattr(chart, what) for chart in charts]
        if clashes := sorted({v for v in values if values.count(v) > 1}):
            raise ValueError(f"two charts share the {what} {', '.join(clashes)}")
    return {chart.name: chart for chart in charts}


CHARTS = registry(
    ChartSpec(
        name="histogram",
        url="/plot/latest.png",  # the CONTRACT's route and file
        file="error_distribution.png",
        window=Window.ALL,
        caption="histogram of absolute errors, mean and median marked",
        figure=HistogramChart,
        draw=lambda chart, rows: chart.render(rows.distribution, rows.stamp),
    ),
    ChartSpec(
        name="error_over_time",
        url="/plot/error_over_time.png",
        file="error_over_time.png",
        window=Window.RECENT,
        caption="absolute error per row over time, with its rolling mean",
        figure=ErrorOverTimeChart,
        draw=lambda chart, rows: chart.render(rows.errors, rows.first_row, rows.stamp),
    ),
    ChartSpec(
        name="pred_vs_true",
        url="/plot/pred_vs_true.png",
        file="pred_vs_true.png",
        window=Window.RECENT,
        caption="prediction against label, with the line y = x",
        figure=PredVsTrueChart,
        draw=lambda chart, rows: chart.render(rows.y_true, rows.y_pred, rows.stamp),
    ),
    ChartSpec(
        name="estimate",
        url="/plot/estimate.png",
        file="estimate.png",
        window=Window.ESTIMATE,
        caption="estimated MAE of the recent predictions with its band, and realized MAE beside the estimate of the same rows",
        figure=EstimateChart,
        draw=lambda chart, rows: chart.render(rows.times, rows.columns, rows.stamp),
    ),
    ChartSpec(
        name="drift",
        url="/plot/drift.png",
        file="drift.png",
        window=Window.DRIFT,
        caption="each feature's and the prediction's share per reference decile, window against reference, drifted in red",
        figure=DriftChart,
        draw=lambda chart, rows: chart.render(rows.report, rows.stamp),
    ),
)


def charts_to_draw(charts: Iterable[ChartSpec], drawn: Mapping[str, tuple[int, int]], changes: int) -> list[str]:
    """The names of the metric-log charts a refresh draws, in registry order, given what each was
    last drawn from (``drawn[name]`` = (the tail's change count then, the refresh number then)) and
    the tail's change count now. (A drift chart is drawn whenever model_api's report changed.)

    Every every-row chart that is behind. Of the last-rows charts, the ones never drawn, else the
    one behind that was drawn longest ago (the first in the registry on a tie): after the first
    refresh each draws at most one of them, and all are current at most as many refreshes after
    the rows stop coming as there are last-rows charts.
    """
    behind = [chart for chart in charts if chart.window in LOG_WINDOWS and drawn.get(chart.name, (None, 0))[0] != changes]
    every = [chart.name for chart in behind if chart.window is Window.ALL]
    in_turn = [chart.name for chart in behind if chart.window is Window.RECENT]
    never = [name for name in in_turn if name not in drawn]
    chosen = {*every, *(never or sorted(in_turn, key=lambda name: drawn[name][1])[:1])}  # sorted() is stable
    return [chart.name for chart in behind if chart.name in chosen]
