"""The estimate chart's history (issue 24): a point when the summary moved, the version that moved last, drawn."""

import math

import numpy as np

from services.common.contracts.summary import EstimateSummary
from services.plot_api.charts import CHARTS, EstimateRows
from services.plot_api.estimate_history import POINTS_MAX, EstimateHistory

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def estimate(predictions: int, rows: int, version: str = "v1", estimated: float = 10.0) -> EstimateSummary:
    window = {"predictions": predictions, "estimated_mae": estimated, "band": 1.0}
    checked = {
        "rows": rows,
        "realized_mae": 12.0 if rows else None,
        "estimated_mae": estimated if rows else None,
        "band": 0.5 if rows > 1 else None,
    }
    state = {
        "windows": {"all": window, "last_300": window},
        "checked": {"all": checked, "last_300": checked},
        "without_estimate": 0,
        "band_basis": "reference",
        "alert_raised": False,
    }
    return EstimateSummary.model_validate({"available": True, "unavailable_because": None, "by_model_version": {version: state}})


def test_a_point_is_added_only_when_the_summary_moved() -> None:
    history = EstimateHistory()
    assert history.add(100.0, estimate(1, 0))
    assert not history.add(101.0, estimate(1, 0))  # nothing new: no point
    assert history.add(102.0, estimate(1, 1))  # a row joined
    assert not history.add(103.0, None)  # metric_api had no estimate block
    version, points = history.points()
    assert version == "v1" and [p.at for p in points] == [100.0, 102.0]
    assert points[0].realized is None and points[1].realized == 12.0


def test_the_chart_follows_the_version_that_moved_last_and_memory_is_bounded() -> None:
    history = EstimateHistory()
    for i in range(POINTS_MAX + 50):
        history.add(float(i), estimate(i + 1, 0, "old"))
    history.add(10_000.0, estimate(1, 0, "new"))
    assert history.points()[0] == "new"
    assert len(history.tracks["old"].points) == POINTS_MAX


def test_the_estimate_chart_draws_a_png_with_gaps_where_nothing_is_known() -> None:
    history = EstimateHistory()
    for i in range(5):
        history.add(1000.0 + 10 * i, estimate(100 * (i + 1), 50 * i))
    rows = EstimateRows.of(history)
    assert rows is not None and math.isnan(rows.columns["realized"][0]) and rows.columns["realized"][-1] == 12.0
    assert np.all(rows.columns["estimated"] == 10.0)
    chart = CHARTS["estimate"]
    assert chart.draw(chart.figure(), rows).startswith(PNG_SIGNATURE)
    assert EstimateRows.of(EstimateHistory()) is None
