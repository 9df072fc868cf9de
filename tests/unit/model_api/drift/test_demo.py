"""The decision on the diabetes demo as train writes it: at most one false alarm in 20 calm windows,
a one-std shift of bmi flagged on bmi and the prediction within one window; the alert; reassessing."""

import json
from typing import Any

import numpy as np
import pytest

from services.common.reference import ReferenceTable
from services.common.schema import DIABETES
from services.model_api.drift import (
    MIN_SAMPLES,
    PREDICTION,
    DriftAlert,
    DriftChange,
    DriftMonitor,
    Reference,
)
from services.model_api.drift.reference import NumericReference
from tests.unit.model_api.drift.made import HOMES_NAMES, NAMES, WINDOW, Demo, draw


def test_the_demo_reference_is_every_diabetes_row_judged_by_ks(demo: Demo) -> None:
    reference = demo.reference
    assert reference.rows == 442 and reference.schema == DIABETES
    sex = reference.features[1]
    # sex has two values: a bin each, and an empty one above both.
    assert isinstance(sex, NumericReference) and len(sex.edges) == 2 and sex.counts[-1] == 0
    monitor = DriftMonitor(reference, DIABETES, WINDOW, 3600.0)
    rows = draw(np.random.default_rng(0), 100)
    monitor.observe(rows, demo.predict(rows), 0.0)
    report = monitor.assess(0.0)
    assert report["rule"]["decides"] == "ks" and report["rule"]["threshold"] == pytest.approx(0.01 / 11)
    assert report["schema"] == {"features": 10, "numeric": 10, "categorical": 0}
    assert list(report["features"]) == NAMES and report["reference"] == {"rows": 442, "source": reference.source, "bins": 10}


def test_twenty_calm_windows_raise_at_most_one_false_alarm(demo: Demo) -> None:
    rng = np.random.default_rng(2024)
    alarms = 0
    for _ in range(20):
        monitor = DriftMonitor(demo.reference, DIABETES, size=WINDOW, max_age_s=3600.0)
        rows = draw(rng, WINDOW)
        monitor.observe(rows, demo.predict(rows), 0.0)
        report = monitor.assess(0.0)
        assert report["status"] in ("calm", "drifted")
        alarms += bool(report["drifted"])
    assert alarms <= 1


def test_a_one_std_shift_of_bmi_is_flagged_on_it_and_the_prediction_within_a_window(demo: Demo) -> None:
    rng = np.random.default_rng(99)
    monitor = DriftMonitor(demo.reference, DIABETES, size=WINDOW, max_age_s=3600.0)
    alert = DriftAlert()
    calm = draw(rng, WINDOW)
    monitor.observe(calm, demo.predict(calm), 0.0)
    assert monitor.assess(0.0)["status"] == "calm" and alert.check(monitor.assess(0.0), 0.0) is None
    flagged: dict[str, int] = {}
    step = 5
    for sent in range(step, WINDOW + 1, step):  # then the shifted samples, a few at a time
        rows = draw(rng, step, shift_bmi=1.0)
        monitor.observe(rows, demo.predict(rows), float(sent))
        report = monitor.assess(float(sent))
        for name in report["drifted"]:
            flagged.setdefault(name, sent)
        assert set(report["drifted"]) <= {"bmi", PREDICTION}, (sent, report["drifted"])  # the others stay calm
        if change := alert.check(report, float(sent)):
            assert change.state == "raised" and "bmi" in change.drifted
    assert set(flagged) == {"bmi", PREDICTION}
    assert flagged["bmi"] < flagged[PREDICTION] <= WINDOW  # the feature first: it moved by a whole std
    final = monitor.assess(float(WINDOW))
    bmi = final["features"]["bmi"]
    assert bmi["decided_by"] == "ks" and bmi["out_of_range_share"] > 0 and bmi["psi_band"] == "significant"
    print(f"flagged after {flagged} shifted samples (window {WINDOW})")


def test_too_few_samples_are_shown_but_not_judged(demo: Demo) -> None:
    monitor = DriftMonitor(demo.reference, DIABETES, size=WINDOW, max_age_s=3600.0)
    rows = draw(np.random.default_rng(1), MIN_SAMPLES - 1, shift_bmi=5.0)
    monitor.observe(rows, demo.predict(rows), 0.0)
    report = monitor.assess(0.0)
    assert report["status"] == "collecting" and str(MIN_SAMPLES) in report["reason"]
    assert report["drifted"] == [] and report["features"]["bmi"]["ks_p"] < 1e-6  # computed, not judged
    assert report["features"]["bmi"]["decided_by"] is None
    assert DriftAlert().check(report, 0.0) is None


def test_an_empty_window_has_the_null_statistics(demo: Demo, homes: tuple[Reference, ReferenceTable]) -> None:
    for reference in (demo.reference, homes[0]):
        report = DriftMonitor(reference, reference.schema, 10, 60.0).assess(0.0)
        assert json.loads(json.dumps(report, allow_nan=False)) == report
        assert report["status"] == "collecting" and report["window"]["count"] == 0
        for column in [*report["features"].values(), report["prediction"]]:
            assert column["drifted"] is False and column["psi"] is None and column["missing_share"] is None
            assert (column["ks_p"] if column["kind"] == "numeric" else column["chi2_p"]) is None


def test_a_monitor_without_reference_says_drift_is_unavailable_and_why(homes: tuple[Reference, ReferenceTable]) -> None:
    schema = homes[0].schema
    monitor = DriftMonitor(None, schema, 10, 60.0, unavailable="no reference file")
    monitor.observe(np.zeros((3, 5)), np.array([1.0, 2.0, 3.0]), 0.0)
    report = monitor.assess(1.0)
    assert (report["status"], report["reason"], report["rule"]) == ("unavailable", "no reference file", None)
    assert list(report["features"]) == list(HOMES_NAMES) and report["window"]["count"] == 3
    assert report["features"]["city"] == {"drifted": False, "kind": "categorical"}
    assert not any(column["drifted"] for column in [*report["features"].values(), report["prediction"]])


def test_the_alert_changes_once_each_way() -> None:
    alert = DriftAlert()

    def report(drifted: list[str], status: str = "calm") -> dict[str, Any]:
        return {"status": status, "drifted": drifted, "window": {"count": 300}, "rule": {"text": "KS"}}

    assert alert.check(report([]), 1.0) is None
    raised = alert.check(report(["bmi"], "drifted"), 2.0)
    assert raised == DriftChange("raised", ("bmi",), 300, "KS", 2.0)
    assert alert.check(report(["bmi", "prediction"], "drifted"), 3.0) is None  # still raised
    assert alert.check(report([], "collecting"), 4.0) is None  # not judged: no change
    cleared = alert.check(report([]), 5.0)
    assert cleared is not None and cleared.state == "cleared" and alert.since is None


def test_a_changing_window_is_assessed_again_at_most_every_reassess_s(demo: Demo) -> None:
    monitor = DriftMonitor(demo.reference, DIABETES, size=WINDOW, max_age_s=3600.0, reassess_s=1.0)
    rng = np.random.default_rng(4)
    rows = draw(rng, 50)
    monitor.observe(rows, demo.predict(rows), 10.0)
    first = monitor.assess(10.0)
    more = draw(rng, 50)
    monitor.observe(more, demo.predict(more), 10.5)
    assert monitor.assess(10.5) is first  # half a second later: the report of a moment ago
    assert monitor.assess(11.0)["window"]["count"] == 100  # a second later: the window as it is
    assert monitor.assess(50.0)["window"]["count"] == 100  # nothing new: the same report, however late
