"""The MAE alert's state and payload, and the baseline."""

import json
import math
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from services.common.settings import Settings
from services.metric_api.alerts import AlertChange, MaeAlert
from services.metric_api.monitor import read_baseline


def test_the_alert_is_raised_once_above_the_threshold_and_cleared_once_back() -> None:
    alert = MaeAlert(10.0)
    assert alert.check(None, 1.0) is None  # no rows: nothing to say
    assert alert.check(10.0, 2.0) is None  # at the threshold is not above it
    raised = alert.check(10.5, 3.0)
    assert raised == AlertChange("raised", "last_100", 10.5, 10.0, 3.0)
    assert alert.check(12.0, 4.0) is None  # still raised: no second change
    assert alert.state() == {"window": "last_100", "mae": 12.0, "threshold": 10.0, "since": 3.0}
    cleared = alert.check(9.0, 5.0)
    assert cleared == AlertChange("cleared", "last_100", 9.0, 10.0, 5.0)
    assert alert.state() is None
    assert alert.check(8.0, 6.0) is None


def test_a_change_is_posted_as_the_documented_payload() -> None:
    # The webhook itself (order, retries) is tested in tests/unit/common/test_webhook.py.
    assert AlertChange("raised", "last_100", 12.5, 10.0, 100.0).payload("metric_api") == {
        "alert": "raised", "service": "metric_api", "window": "last_100", "mae": 12.5, "threshold": 10.0, "at": 100.0,
    }  # fmt: skip


def test_the_baseline_is_the_training_mean_from_the_model_sidecar(tmp_path: Path) -> None:
    model = tmp_path / "model.pkl"
    (tmp_path / "model.pkl.json").write_text(json.dumps({"target_mean": 151.25}))
    baseline = read_baseline(Settings(MODEL_PATH=model))
    assert (baseline.mean, baseline.problem) == (151.25, None)
    assert str(tmp_path / "model.pkl.json") in (baseline.source or "")
    assert read_baseline(Settings(MODEL_PATH=model, BASELINE_MEAN=140.0)).mean == 140.0


@pytest.mark.parametrize("sidecar", [None, "{not json", '{"metrics": {}}', '{"target_mean": "151"}'])
def test_without_a_usable_sidecar_the_baseline_is_null_and_says_what_to_do(tmp_path: Path, sidecar: str | None) -> None:
    if sidecar is not None:
        (tmp_path / "model.pkl.json").write_text(sidecar)
    baseline = read_baseline(Settings(MODEL_PATH=tmp_path / "model.pkl"))
    assert baseline.mean is None
    assert baseline.problem and "model.pkl.json" in baseline.problem and "BASELINE_MEAN" in baseline.problem


def test_rows_too_absurd_for_the_statistics_never_disable_them_or_the_alert(tmp_path: Path) -> None:
    """Rows of an older CSV whose errors overflow (|e| of 1.7e308 - -1.7e308 is inf) are left out
    and counted: the other rows keep every number, model_mae stays, the alert still fires."""
    from services.common.contracts.summary import JOIN_COUNTS
    from services.common.metric_rows import MetricRow
    from services.metric_api.monitor import QualityMonitor
    from tests.quality import strict_json

    monitor = QualityMonitor(Settings(MODEL_PATH=tmp_path / "none.pkl", MAE_ALERT=1.0))
    monitor.add_rows([MetricRow.of("1.000001", 1e300, -1e300), MetricRow.of("1.000002", 5.0, 7.0)], 1000.0)
    monitor.add_rows([MetricRow.of("1.000003", 1.7e308, -1.7e308), MetricRow.of("1.000004", math.nan, 1.0)], 1000.2)
    monitor.add_rows([MetricRow.of("1.000005", 5.0, 9.0)], 1000.4)
    summary = strict_json(monitor.summary(dict.fromkeys(JOIN_COUNTS, 0), "metric_log.csv", 1000.5))
    assert (summary["count"], summary["excluded_rows"]) == (2, 3)
    assert (summary["mae"], summary["rmse"]) == (3.0, math.sqrt((2.0**2 + 4.0**2) / 2))
    assert summary["alert"] == {"window": "last_100", "mae": 3.0, "threshold": 1.0, "since": 1000.0}
    assert summary["baseline"]["mean"] is None and "BASELINE_MEAN" in summary["baseline"]["problem"]
    assert 'model_mae{window="all"} 3.0' in generate_latest().decode()
