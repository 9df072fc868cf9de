"""The MAE alert's CUSUM: its calibration holds the false-alarm rate it states on errors drawn like the
reference's, it finds a +20 % rise of the MAE in about the rows it promises, it does not flap, and
metric_api's summary and board show it (MAE_DETECTOR=cusum, the default)."""

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.common.contracts.summary import JOIN_COUNTS
from services.common.metric_rows import MetricRow
from services.common.reference import read_reference
from services.common.registration import read_registration
from services.common.settings import Settings
from services.metric_api.cusum import CalibrationError, Cusum, calibrate
from services.metric_api.monitor import QualityMonitor
from tests.json_stub import JsonStub
from tests.quality import strict_json

# Errors shaped like a regression model's: a half-normal |e| (the demo's are about that: mean 43, std 32).
ERRORS = np.abs(np.random.default_rng(3).normal(0.0, 50.0, 2000))


def alarms_per_row(errors: np.ndarray, scale: float, rows: int, chains: int, seed: int) -> tuple[float, np.ndarray]:
    """A plain CUSUM (restarted after each alarm) over ``chains`` streams drawn from ``errors`` × ``scale``:
    the share of rows that raised an alarm, and each stream's first alarm (row, 1-based; 0: none)."""
    c = calibrate(errors)
    rng = np.random.default_rng(seed)
    s, alarms, first = np.zeros(chains), 0, np.zeros(chains, dtype=int)
    for row in range(1, rows + 1):
        z = (scale * rng.choice(errors, chains) - errors.mean()) / errors.std(ddof=1)
        s = np.maximum(0.0, s + z - 0.1 * errors.mean() / errors.std(ddof=1))  # k: half of 20 % of the mean
        hit = s > c.h
        alarms += int(hit.sum())
        first[(first == 0) & hit] = row
        s[hit] = 0.0
    return alarms / (rows * chains), first


def test_the_calibrated_threshold_keeps_false_alarms_to_about_one_in_10000_calm_rows() -> None:
    rate, _ = alarms_per_row(ERRORS, 1.0, rows=20_000, chains=1000, seed=11)  # 20 million calm rows
    assert 0.5e-4 < rate < 1.3e-4, rate  # 1 in 10,000 stated; the discretised chain is a little cautious


def test_a_20_percent_rise_of_the_mae_is_found_in_about_the_rows_the_calibration_states() -> None:
    calibration = calibrate(ERRORS)
    _, first = alarms_per_row(ERRORS, 1.2, rows=3000, chains=1000, seed=12)
    assert (first > 0).all()
    assert 0.85 < first.mean() / calibration.arl1 < 1.15, (first.mean(), calibration.arl1)
    assert np.median(first) <= 200


def test_raised_it_stays_raised_while_the_errors_stay_up_and_clears_once_they_are_back() -> None:
    detector = Cusum(calibrate(ERRORS))
    rng = np.random.default_rng(5)
    assert detector.add(rng.choice(ERRORS, 2000)) == []  # calm
    high = detector.add(1.5 * rng.choice(ERRORS, 2000))
    assert [v.raised for v in high] == [True] and high[0].row < 2000 + 300
    assert high[0].mae > 1.2 * ERRORS.mean()  # the level it judged, not the reference's
    assert detector.add(1.3 * rng.choice(ERRORS, 3000)) == []  # still well up: no flap
    back = detector.add(rng.choice(ERRORS, 3000))
    assert [v.raised for v in back] == [False] and back[0].row < 7000 + 500
    assert detector.add([float("nan"), float("inf")]) == [] and detector.rows == 10_000  # not a number: skipped


@pytest.mark.parametrize(("errors", "why"), [([1.0] * 20, "at least 30"), ([3.0] * 100, "do not vary")])
def test_errors_that_cannot_calibrate_say_why(errors: list[float], why: str) -> None:
    with pytest.raises(CalibrationError, match=why):
        calibrate(errors)


def reference_errors(model_path: Path) -> np.ndarray:
    registration = read_registration(model_path)
    loaded = read_reference(model_path, registration.metadata, registration.schema)
    assert not isinstance(loaded, str)
    return np.asarray(loaded.table.target - loaded.table.prediction)


def test_metric_api_raises_and_clears_the_mae_alert_on_its_board_in_the_one_payload_shape(model_path: Path) -> None:
    errors = reference_errors(model_path)
    rng = np.random.default_rng(9)

    def rows(start: int, scale: float, n: int) -> list[MetricRow]:
        e = scale * rng.choice(np.abs(errors), n)
        return [MetricRow.of(f"{start + i}.000001", 100.0, 100.0 + float(x)) for i, x in enumerate(e)]

    async def scenario(receiver: JsonStub) -> list[dict[str, Any]]:
        monitor = QualityMonitor(Settings(MODEL_PATH=model_path, ALERT_WEBHOOK_URL=receiver.url))
        seen = []
        for batch, (scale, n) in enumerate([(1.0, 1000), (1.6, 500), (1.0, 3000)]):
            monitor.add_rows(rows(10_000 * (batch + 1), scale, n), 100.0 + batch)
            summary = strict_json(monitor.summary(dict.fromkeys(JOIN_COUNTS, 0), "metric_log.csv", 100.0 + batch))
            seen.append(summary)
        await monitor.close()
        return seen

    with JsonStub("/hook") as receiver:
        calm, shifted, back = asyncio.run(scenario(receiver))
    assert calm["alerts"]["mae"]["state"] == "cleared" and "CUSUM" in calm["alerts"]["mae"]["summary"]
    assert shifted["alerts"]["mae"]["state"] == "raised" and shifted["alert"]["window"] == "recent_rows"
    assert shifted["alert"]["threshold"] == pytest.approx(np.abs(errors).mean())  # the reference's MAE
    assert back["alerts"]["mae"]["state"] == "cleared" and back["alert"] is None
    assert [(p["alert"], p["state"], p["service"]) for p in receiver.posted] == [
        ("mae", "raised", "metric_api"),
        ("mae", "cleared", "metric_api"),
    ]
    raised = receiver.posted[0]
    assert raised["details"]["detector"] == "cusum" and 1000 < raised["details"]["row"] <= 1500  # within the shifted rows
    assert REGISTRY.get_sample_value("model_mae_alert") == 0.0


def test_mae_detector_threshold_is_the_old_alert_and_is_the_default_when_only_mae_alert_is_set(tmp_path: Path) -> None:
    assert Settings().mae_detector == "cusum"
    assert Settings(MAE_ALERT=50.0).mae_detector == "threshold"
    assert Settings(MAE_ALERT=50.0, MAE_DETECTOR="cusum").mae_detector == "cusum"
    monitor = QualityMonitor(Settings(MODEL_PATH=tmp_path / "none.pkl", MAE_DETECTOR="threshold"))
    assert monitor.alert is None  # threshold without MAE_ALERT: no MAE alert
    without_reference = QualityMonitor(Settings(MODEL_PATH=tmp_path / "none.pkl"))
    assert without_reference.alert is None  # nothing to calibrate on: no alert, and the log says why
