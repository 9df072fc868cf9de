"""The chart registry: each registered chart draws from the rows of its window; clashes are refused."""

import io
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from services.common.files import METRIC_LOG
from services.common.schema import DIABETES
from services.plot_api.charts import CHARTS, LOG_WINDOWS, AllRows, ChartSpec, DriftRows, RecentRows, Window, registry, rows_for
from services.plot_api.tail import MetricLogTail
from tests.unit.metric_log import append, metric_rows
from tests.unit.plot_api.test_drift_chart import parsed, unavailable_report, watched

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    return tmp_path / METRIC_LOG


LOG_CHARTS = {name: chart for name, chart in CHARTS.items() if chart.window in LOG_WINDOWS}


@pytest.mark.parametrize("chart", LOG_CHARTS.values(), ids=list(LOG_CHARTS))
def test_every_registered_chart_draws_the_rows_of_its_window_again_as_they_change(chart: ChartSpec, csv: Path) -> None:
    append(csv, metric_rows(0, 300, seed=1))
    tail = MetricLogTail(csv)
    tail.read_new()
    figure = chart.figure()  # one per service, reused by every render as there
    first = chart.draw(figure, rows_for(chart.window, tail))
    assert first.startswith(PNG_SIGNATURE)
    height, width = matplotlib.image.imread(io.BytesIO(first), format="png").shape[:2]
    assert width > height > 0
    append(csv, metric_rows(300, 200, seed=2, spread=120.0))
    tail.read_new()
    assert chart.draw(figure, rows_for(chart.window, tail)) != first


def test_every_row_and_last_rows_are_what_their_names_say(csv: Path) -> None:
    rows = metric_rows(0, 25, seed=3)
    append(csv, rows)
    tail = MetricLogTail(csv, recent=10)
    tail.read_new()
    every = rows_for(Window.ALL, tail)
    assert isinstance(every, AllRows)
    assert every.distribution.count == 25
    assert every.distribution.mean == pytest.approx(np.mean([r.absolute_error for r in rows]))
    assert "n = 25 rows · window: all rows" in every.stamp
    recent = rows_for(Window.RECENT, tail)
    assert isinstance(recent, RecentRows)
    assert recent.y_true.tolist() == [r.y_true for r in rows[15:]]
    assert recent.y_pred.tolist() == [r.y_pred for r in rows[15:]]
    assert recent.errors.tolist() == [r.absolute_error for r in rows[15:]]
    assert recent.first_row == 16
    assert "n = 25 rows · window: the last 10 rows" in recent.stamp


def spec(name: str, url: str | None = None, file: str | None = None) -> ChartSpec:
    return ChartSpec(
        name=name,
        url=url or f"/plot/{name}.png",
        file=file or f"{name}.png",
        window=Window.ALL,
        caption=name,
        draw=lambda _f, _r: b"",
    )


def test_the_registry_keeps_the_order_given() -> None:
    assert list(registry(spec("b"), spec("a"), spec("c"))) == ["b", "a", "c"]


@pytest.mark.parametrize(
    ("charts", "refusal"),
    [
        ([spec("a"), spec("a", url="/plot/other.png", file="other.png")], "share the name a"),
        ([spec("a"), spec("b", url="/plot/a.png")], "share the url /plot/a.png"),
        ([spec("a"), spec("b", file="a.png")], "share the file a.png"),
        ([spec("a", url="/charts/a.png")], "must be /plot/<one segment>"),
        ([spec("a", url="/plot/x/a.png")], "must be /plot/<one segment>"),
        ([spec("a", url="/plot/")], "must be /plot/<one segment>"),
        ([spec("a-b")], "plain identifier"),
    ],
)
def test_the_registry_refuses_charts_that_would_clash(charts: list[ChartSpec], refusal: str) -> None:
    with pytest.raises(ValueError, match=refusal):
        registry(*charts)


def drift_report(shift: float, count: int = 300, seed: int = 0) -> dict:
    """A report as model_api's GET /drift gives it (JSON-ready), made by its own drift core on the
    diabetes data (the default schema); bmi shifted by ``shift`` of its std. test_app.py serves it as model_api."""
    from sklearn.datasets import load_diabetes

    from services.common.reference import ReferenceTable
    from services.model_api.drift import DriftMonitor, Reference

    diabetes = load_diabetes()
    data, rng = diabetes.data, np.random.default_rng(seed)

    def predict(rows: np.ndarray) -> np.ndarray:  # a stand-in linear model
        predicted: np.ndarray = rows @ np.arange(1.0, 11.0) * 100
        return predicted

    table = ReferenceTable(DIABETES, tuple(data.T), diabetes.target, predict(data), "test")
    monitor = DriftMonitor(Reference.from_table(table), DIABETES, size=300, max_age_s=3600.0)
    rows = data[rng.integers(len(data), size=count)].copy()
    rows[:, 2] += shift * data[:, 2].std()
    monitor.observe(rows, predict(rows), 1700000000.0)
    return watched(monitor.assess(1700000000.0), DIABETES, rows)


def test_the_drift_chart_draws_model_apis_report_and_is_redrawn_only_when_it_changed() -> None:
    chart = CHARTS["drift"]
    assert chart.window is Window.DRIFT
    figure = chart.figure()
    calm, drifted = DriftRows.of(parsed(drift_report(0.0))), DriftRows.of(parsed(drift_report(1.5)))
    assert "bmi" in drifted.report.drifted and not calm.report.drifted
    pictures = [chart.draw(figure, rows) for rows in (calm, drifted, calm)]
    assert all(p.startswith(PNG_SIGNATURE) for p in pictures)
    assert pictures[0] != pictures[1] and pictures[0] == pictures[2]  # the figure is reused, not left dirty
    chart.draw(figure, drifted)  # the ten features and the prediction, each a panel, the drifted first
    shown = [panel.get_title().split("\n")[0] for panel in figure.panels[:-1] if panel.get_visible()]
    assert shown == ["bmi — drifted", "age", "sex", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "prediction"]
    assert "n = 300 samples" in calm.stamp and "2023-11-14 22:13:20 UTC" in calm.stamp and "abc123def456" in calm.stamp
    same, fewer = (DriftRows.of(parsed(drift_report(0.0, count=count))) for count in (300, 200))
    assert calm.version == same.version != fewer.version
    few = DriftRows.of(parsed(drift_report(0.0, count=5)))
    unavailable = DriftRows.of(unavailable_report(DIABETES))
    for rows in (few, unavailable):
        assert chart.draw(figure, rows).startswith(PNG_SIGNATURE)
