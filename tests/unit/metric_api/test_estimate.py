"""The estimated MAE of the predictions, and the estimate checked against the labels id by id (issue 24)."""

import json
import math
from pathlib import Path

import pytest

from services.common.estimate import Calibration
from services.common.metric_rows import MetricRow
from services.common.settings import Settings
from services.metric_api.estimate import CHECK_MIN_ROWS, EstimateTracker
from services.metric_api.join import LABEL, PREDICTION, Joined, LabelPredictionJoin
from services.metric_api.store import SqliteHalfStore


def row(i: int, error: float, estimate: float | None, version: str = "v1") -> MetricRow:
    return MetricRow.of(f"{i}.000001", 100.0 + error, 100.0, model_version=version, estimated_error=estimate)


def test_the_estimated_mae_is_over_every_prediction_labelled_or_not_with_the_reference_band() -> None:
    tracker = EstimateTracker({"v1": Calibration(rows=400, bias=0.5, residual_sd=10.0, mean_loss=20.0)})
    tracker.add_predictions([("v1", 10.0), ("v1", 20.0), ("v1", 30.0), ("v1", None)])
    state = tracker.summary()["v1"]
    assert state["windows"]["all"] == {"predictions": 3, "estimated_mae": 20.0, "band": 0.5 + 1.96 * 10.0 / math.sqrt(3)}
    assert state["without_estimate"] == 1
    assert state["band_basis"] == "reference"
    assert state["checked"]["all"]["rows"] == 0  # no label yet


def test_without_a_calibration_the_band_comes_from_the_versions_own_joined_rows() -> None:
    tracker = EstimateTracker()
    tracker.add_predictions([("v2", 5.0)] * 10)
    assert tracker.summary()["v2"]["windows"]["all"]["band"] is None
    tracker.add_rows([row(i, 5.0 + (1 if i % 2 else -1), 5.0, "v2") for i in range(40)])
    state = tracker.summary()["v2"]
    assert state["band_basis"] == "joined rows"
    assert state["windows"]["all"]["band"] == pytest.approx(1.96 * 1.0127 / math.sqrt(10), rel=0.01)  # sd of ±1 over 40 rows


def test_joined_rows_put_the_realized_mae_beside_the_estimate_of_the_same_ids() -> None:
    tracker = EstimateTracker()
    tracker.add_rows([row(1, 4.0, 3.0), row(2, 2.0, 3.0), row(3, 9.0, None)])
    checked = tracker.summary()["v1"]["checked"]["all"]
    assert checked["rows"] == 2  # the row without an estimate is not checked
    assert checked["realized_mae"] == 3.0 and checked["estimated_mae"] == 3.0


def test_the_alert_rises_when_the_labels_say_the_model_errs_more_than_estimated_and_clears_when_not() -> None:
    tracker = EstimateTracker()
    calm = [row(i, 10.0 + (i % 5 - 2), 10.0) for i in range(300)]
    results = tracker.add_rows(calm)
    assert results and not results[-1].raised
    worse = [row(1000 + i, 15.0 + (i % 5 - 2), 10.0) for i in range(150)]
    raised_after = next(k for k in range(1, 151) if tracker.add_rows([worse[k - 1]])[-1].raised)
    assert raised_after < 100
    result = tracker.check("v1")
    assert result is not None and result.raised and result.realized > result.estimated + result.band
    tracker.add_rows([row(5000 + i, 10.0 + (i % 5 - 2), 10.0) for i in range(300)])
    after = tracker.check("v1")
    assert after is not None and not after.raised


def test_no_check_before_enough_joined_rows() -> None:
    tracker = EstimateTracker()
    assert tracker.add_rows([row(i, 50.0, 1.0) for i in range(CHECK_MIN_ROWS - 1)]) == []


def test_the_estimate_waits_with_its_prediction_in_the_state_until_the_label_comes(tmp_path: Path) -> None:
    store = SqliteHalfStore(tmp_path / "state.sqlite3")
    LabelPredictionJoin(store).add(PREDICTION, "1.000001", 150.0, 1.0, model_version="v1", estimate=12.5)
    store.close()
    again = SqliteHalfStore(tmp_path / "state.sqlite3")  # a restart meanwhile
    outcome = LabelPredictionJoin(again).add(LABEL, "1.000001", 140.0, 2.0)
    again.close()
    assert isinstance(outcome, Joined)
    assert outcome.row.estimated_error == 12.5 and outcome.row.model_version == "v1"


def test_the_monitor_raises_the_estimate_alert_on_its_board_and_shows_the_estimate_in_the_summary(tmp_path: Path) -> None:
    from services.metric_api.monitor import QualityMonitor

    monitor = QualityMonitor(Settings(MODEL_PATH=tmp_path / "none.pkl"))
    monitor.add_estimates([("v1", 10.0)] * 5)
    monitor.add_rows([row(i, 30.0, 10.0) for i in range(CHECK_MIN_ROWS)], now=1000.0)
    alerts = monitor.alerts.to_json()
    assert alerts["estimate/v1"]["state"] == "raised"
    assert alerts["estimate/v1"]["details"]["realized_mae"] == 30.0
    join = {"pending_y_true": 0, "pending_y_pred": 0, "orphans": 0, "late_joins": 0, "dead_lettered": 0}
    summary = json.loads(monitor.summary(join, "x.csv", 1000.0))
    estimate = summary["estimate"]
    assert estimate["available"] is True
    assert estimate["by_model_version"]["v1"]["windows"]["all"]["estimated_mae"] == 10.0
    assert estimate["by_model_version"]["v1"]["checked"]["all"]["realized_mae"] == 30.0


def test_a_model_registered_after_metric_api_started_gets_its_calibration_when_its_predictions_come(tmp_path: Path) -> None:
    from services.metric_api.monitor import QualityMonitor
    from services.model_api.train import train

    model = tmp_path / "model.pkl"
    monitor = QualityMonitor(Settings(MODEL_PATH=model))
    assert not monitor.estimate_summary()["available"]
    assert "cannot be read" in monitor.estimate_summary()["unavailable_because"]
    metadata = train(model)  # registered while metric_api runs
    version = metadata["sha256"][:12]
    monitor.add_estimates([(version, 40.0)])
    state = monitor.estimate_summary()["by_model_version"][version]
    assert state["band_basis"] == "reference" and state["windows"]["all"]["band"] > 0
