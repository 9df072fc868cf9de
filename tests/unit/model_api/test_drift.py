"""The drift core: every statistic against scipy on the same samples, the window against a plain
list, the reference's round trip, and the decision on the diabetes data as the demo sends it —
no more than one false alarm in 20 calm windows, a one-std shift of bmi flagged on bmi and on the
prediction within one window while the other features stay calm."""

from collections import deque
from typing import Any

import numpy as np
import pytest
from scipy import special, stats
from scipy.spatial.distance import jensenshannon
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from services.common.messages import FEATURE_NAMES
from services.common.settings import Settings
from services.model_api.drift import (
    COLUMNS,
    MIN_SAMPLES,
    PREDICTION,
    BadReference,
    DriftAlert,
    DriftMonitor,
    DriftRule,
    Reference,
    SlidingWindow,
    jensen_shannon_distance,
    ks_and_wasserstein,
    population_stability_index,
    quantile_edges,
)
from services.model_api.train import diabetes_split

DATA = load_diabetes().data  # what the demo draws its rows from
WINDOW = Settings.model_fields["DRIFT_WINDOW_SIZE"].default  # the documented default window


@pytest.fixture(scope="module")
def model_and_reference() -> tuple[LinearRegression, Reference]:
    """The demo's model (train's default) and its reference, built as train builds it."""
    split = diabetes_split()
    model = LinearRegression().fit(split.x_train, split.y_train)
    return model, Reference.build(split.x_train, model.predict(split.x_train), "the training split")


def sample_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Reference and window samples: continuous, heavily tied (as sex, with two values), shifted."""
    rng = np.random.default_rng(7)
    pairs = []
    for m in (30, 100, 300):
        for shift in (0.0, 0.3, 1.0):
            pairs.append((rng.normal(size=353), rng.normal(loc=shift, size=m)))
            pairs.append((rng.choice([-0.04, 0.05], size=353), rng.choice([-0.04, 0.05], size=m) + shift * 0.05))
        column = int(rng.integers(10))
        pairs.append((DATA[rng.choice(442, 353, replace=False), column], DATA[rng.integers(442, size=m), column]))
    return pairs


PAIRS = sample_pairs()


@pytest.mark.parametrize(("reference", "current"), PAIRS)
def test_the_ks_statistic_and_the_wasserstein_distance_are_scipys(reference: np.ndarray, current: np.ndarray) -> None:
    statistic, _p, wasserstein = ks_and_wasserstein(np.sort(reference), current)
    assert statistic == pytest.approx(stats.ks_2samp(reference, current).statistic, abs=1e-12)
    assert wasserstein == pytest.approx(stats.wasserstein_distance(reference, current), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("reference", "current"), PAIRS)
def test_the_ks_p_value_is_within_a_few_per_cent_of_scipys_exact_one(reference: np.ndarray, current: np.ndarray) -> None:
    _d, p_value, _w = ks_and_wasserstein(np.sort(reference), current)
    exact = stats.ks_2samp(reference, current).pvalue  # method "auto": exact at these sizes
    assert abs(p_value - exact) <= 0.025
    if exact >= 1e-3:
        assert p_value == pytest.approx(exact, rel=0.05)


def test_the_ks_decision_is_scipys_on_the_diabetes_columns() -> None:
    """Over shifts from none to one std of every column, the Bonferroni-corrected decision agrees
    with one on scipy's exact p-value, but where that p-value is within 10 % of the threshold."""
    rng = np.random.default_rng(11)
    alpha = DriftRule.for_reference(353).threshold
    checked = 0
    for column in range(10):
        reference = np.sort(DATA[rng.choice(442, 353, replace=False), column])
        for shift in np.linspace(0, 1, 21):
            current = DATA[rng.integers(442, size=int(rng.integers(MIN_SAMPLES, 400))), column] + shift * DATA[:, column].std()
            exact = stats.ks_2samp(reference, current).pvalue
            if abs(exact / alpha - 1) > 0.1:
                assert (ks_and_wasserstein(reference, current)[1] <= alpha) == (exact <= alpha), (column, shift)
                checked += 1
    assert checked > 150


def binned_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The shares per bin, bins right-closed (edges[i-1] < x <= edges[i]), by numpy's digitize."""
    counts = np.bincount(np.digitize(values, edges, right=True), minlength=edges.size + 1)
    return counts / counts.sum()


@pytest.mark.parametrize(("reference", "current"), PAIRS)
def test_psi_and_jensen_shannon_are_scipys_on_the_reference_bins(reference: np.ndarray, current: np.ndarray) -> None:
    edges = quantile_edges(reference)
    p, q = binned_shares(reference, edges), binned_shares(current, edges)
    # PSI is the symmetric Kullback–Leibler divergence of the shares, an empty bin counting 1e-4
    # (not renormalised, as Evidently: so scipy's rel_entr, not its entropy, which renormalises).
    p_, q_ = np.where(p == 0, 1e-4, p), np.where(q == 0, 1e-4, q)
    expected_psi = np.sum(special.rel_entr(q_, p_) + special.rel_entr(p_, q_))
    ref_counts = np.bincount(np.digitize(reference, edges, right=True), minlength=edges.size + 1)
    cur_counts = np.bincount(np.digitize(current, edges, right=True), minlength=edges.size + 1)
    assert population_stability_index(ref_counts, cur_counts) == pytest.approx(expected_psi, rel=1e-9, abs=1e-12)
    assert jensen_shannon_distance(ref_counts, cur_counts) == pytest.approx(jensenshannon(p, q), rel=1e-9, abs=1e-7)


def test_the_monitor_reports_scipys_numbers_for_the_samples_in_its_window(model_and_reference: tuple[Any, Reference]) -> None:
    """Fed more than a window's worth, in batches over time, the monitor's numbers are scipy's on
    exactly the samples it should hold: the newest ``size`` of those within ``max_age_s``."""
    model, reference = model_and_reference
    rng = np.random.default_rng(3)
    monitor = DriftMonitor(reference, size=250, max_age_s=60.0)
    seen: list[tuple[float, np.ndarray]] = []
    for second in range(0, 100, 5):
        rows = DATA[rng.integers(442, size=int(rng.integers(1, 40)))] * rng.uniform(0.8, 1.3)
        monitor.observe(rows, model.predict(rows), float(second))
        seen += [(float(second), np.append(row, prediction)) for row, prediction in zip(rows, model.predict(rows), strict=True)]
    now = 99.0
    expected = np.array([row for at, row in seen if at >= now - 60.0][-250:])
    report = monitor.assess(now)
    assert report["window"]["count"] == len(expected) and report["window"]["seen"] == len(seen)
    columns = {**report["features"], PREDICTION: report["prediction"]}
    assert list(columns) == list(COLUMNS)
    for i, name in enumerate(COLUMNS):
        ref_values, current = reference.columns[name].values, expected[:, i]
        column = columns[name]
        assert column["ks_statistic"] == pytest.approx(stats.ks_2samp(ref_values, current).statistic, abs=1e-12), name
        normed = stats.wasserstein_distance(ref_values, current) / np.std(ref_values)
        assert column["wasserstein_norm"] == pytest.approx(normed, rel=1e-9), name
        assert (
            column["bins"]["current"]
            == np.bincount(
                np.digitize(current, column["bins"]["edges"], right=True), minlength=len(column["bins"]["edges"]) + 1
            ).tolist()
        )
        outside = np.mean((current < ref_values.min()) | (current > ref_values.max()))
        assert column["out_of_range_share"] == pytest.approx(outside), name
        assert column["window"]["mean"] == pytest.approx(current.mean()), name


def test_the_window_holds_the_newest_rows_within_its_age_like_a_plain_list() -> None:
    rng = np.random.default_rng(5)
    window = SlidingWindow(size=7, max_age_s=10.0, width=2)
    model: deque[tuple[float, list[float]]] = deque()
    now = 0.0
    for step in range(300):
        now += float(rng.choice([0.5, 3.0, 12.0]))
        batch = rng.normal(size=(int(rng.integers(0, 12)), 2))
        window.add(batch, now)
        model.extend((now, row.tolist()) for row in batch)
        if step % 3 == 0:
            window.expire(now)
        while len(model) > 7 or (step % 3 == 0 and model and model[0][0] < now - 10.0):
            model.popleft()
        assert window.rows().tolist() == [row for _, row in model], step
        assert window.span() == ((model[0][0], model[-1][0]) if model else (None, None))
    assert window.nbytes == 7 * 2 * 8 + 7 * 8


def test_a_monitor_without_reference_says_drift_is_unavailable_and_why() -> None:
    monitor = DriftMonitor(None, 10, 60.0, unavailable="no reference file")
    monitor.observe(DATA[:3], np.array([1.0, 2.0, 3.0]), 0.0)
    report = monitor.assess(1.0)
    assert (report["status"], report["reason"], report["rule"]) == ("unavailable", "no reference file", None)
    assert list(report["features"]) == list(FEATURE_NAMES) and report["window"]["count"] == 3
    assert not any(column["drifted"] for column in [*report["features"].values(), report["prediction"]])


def test_a_reference_survives_its_file_format_and_refuses_what_it_cannot_use(model_and_reference: tuple[Any, Reference]) -> None:
    _model, reference = model_and_reference
    again = Reference.from_json(reference.to_json())
    assert again.rows == reference.rows == 353
    for name in COLUMNS:
        np.testing.assert_array_equal(again.columns[name].values, reference.columns[name].values)
        np.testing.assert_array_equal(again.columns[name].edges, reference.columns[name].edges)
    assert len(reference.columns["sex"].edges) == 2  # two values: a bin each, and an empty one above both
    data = reference.to_json()
    with pytest.raises(BadReference, match="format"):
        Reference.from_json({**data, "format": 99})
    with pytest.raises(BadReference, match="in that order"):
        Reference.from_json({**data, "values": dict(reversed(list(data["values"].items())))})
    with pytest.raises(BadReference, match="finite"):
        Reference.from_json({**data, "values": {**data["values"], "bmi": [float("nan")] * 353}})
    with pytest.raises(BadReference, match="one number per row"):
        Reference.from_json({**data, "values": {**data["values"], "bmi": [1.0] * 3}})


def test_the_rule_is_ks_with_bonferroni_up_to_1000_reference_rows_and_normed_wasserstein_above() -> None:
    small, large = DriftRule.for_reference(1000), DriftRule.for_reference(1001)
    assert small.method == "ks" and small.threshold == pytest.approx(0.05 / 11)
    assert (large.method, large.threshold) == ("wasserstein", 0.1)
    assert small.drifted(ks_p=0.004, wasserstein_norm=0.0) and not small.drifted(ks_p=0.005, wasserstein_norm=9.0)
    assert large.drifted(ks_p=1.0, wasserstein_norm=0.1) and not large.drifted(ks_p=0.0, wasserstein_norm=0.099)


def test_a_large_reference_is_judged_by_the_normed_wasserstein_distance() -> None:
    rng = np.random.default_rng(2)
    features, predictions = rng.normal(size=(2000, 10)), rng.normal(size=2000)
    monitor = DriftMonitor(Reference.build(features, predictions, "synthetic"), size=500, max_age_s=60.0)
    shifted = rng.normal(size=(500, 10))
    shifted[:, 3] += 0.3  # normed Wasserstein ≈ 0.3; the others ≈ 0.05
    monitor.observe(shifted, rng.normal(size=500), 0.0)
    report = monitor.assess(0.0)
    assert report["rule"]["decides"] == "wasserstein"
    assert report["drifted"] == [FEATURE_NAMES[3]]


def draw(rng: np.random.Generator, count: int, shift_bmi: float = 0.0) -> np.ndarray:
    """Rows as the demo sends them (uniformly from the diabetes data), bmi shifted in std units."""
    rows = DATA[rng.integers(len(DATA), size=count)].copy()
    rows[:, FEATURE_NAMES.index("bmi")] += shift_bmi * DATA[:, FEATURE_NAMES.index("bmi")].std()
    return rows


def test_twenty_calm_windows_raise_at_most_one_false_alarm(model_and_reference: tuple[Any, Reference]) -> None:
    model, reference = model_and_reference
    rng = np.random.default_rng(2024)
    alarms = 0
    for _ in range(20):
        monitor = DriftMonitor(reference, size=WINDOW, max_age_s=3600.0)
        rows = draw(rng, WINDOW)
        monitor.observe(rows, model.predict(rows), 0.0)
        report = monitor.assess(0.0)
        assert report["status"] in ("calm", "drifted")
        alarms += bool(report["drifted"])
    assert alarms <= 1


def test_a_one_std_shift_of_bmi_is_flagged_on_it_and_the_prediction_within_a_window(
    model_and_reference: tuple[Any, Reference],
) -> None:
    model, reference = model_and_reference
    rng = np.random.default_rng(99)
    monitor = DriftMonitor(reference, size=WINDOW, max_age_s=3600.0)
    alert = DriftAlert()
    calm = draw(rng, WINDOW)
    monitor.observe(calm, model.predict(calm), 0.0)
    assert monitor.assess(0.0)["status"] == "calm" and alert.check(monitor.assess(0.0), 0.0) is None
    flagged: dict[str, int] = {}
    step = 5
    for sent in range(step, WINDOW + 1, step):  # then the shifted samples, a few at a time
        rows = draw(rng, step, shift_bmi=1.0)
        monitor.observe(rows, model.predict(rows), float(sent))
        report = monitor.assess(float(sent))
        for name in report["drifted"]:
            flagged.setdefault(name, sent)
        assert set(report["drifted"]) <= {"bmi", PREDICTION}, (sent, report["drifted"])  # the others stay calm
        if change := alert.check(report, float(sent)):
            assert change.state == "raised" and "bmi" in change.drifted
    assert set(flagged) == {"bmi", PREDICTION}
    assert flagged["bmi"] < flagged[PREDICTION] <= WINDOW  # the feature first: it moved by a whole std
    final = monitor.assess(float(WINDOW))
    assert final["features"]["bmi"]["out_of_range_share"] > 0 and final["features"]["bmi"]["psi_band"] == "significant"
    print(f"flagged after {flagged} shifted samples (window {WINDOW})")


def test_too_few_samples_are_shown_but_not_judged(model_and_reference: tuple[Any, Reference]) -> None:
    model, reference = model_and_reference
    monitor = DriftMonitor(reference, size=WINDOW, max_age_s=3600.0)
    rows = draw(np.random.default_rng(1), MIN_SAMPLES - 1, shift_bmi=5.0)
    monitor.observe(rows, model.predict(rows), 0.0)
    report = monitor.assess(0.0)
    assert report["status"] == "collecting" and str(MIN_SAMPLES) in report["reason"]
    assert report["drifted"] == [] and report["features"]["bmi"]["ks_p"] < 1e-6  # computed, not judged
    assert DriftAlert().check(report, 0.0) is None


def test_the_alert_changes_once_each_way() -> None:
    alert = DriftAlert()

    def report(drifted: list[str], status: str = "calm") -> dict[str, Any]:
        return {"status": status, "drifted": drifted, "window": {"count": 300}, "rule": {"text": "KS"}}

    assert alert.check(report([]), 1.0) is None
    raised = alert.check(report(["bmi"], "drifted"), 2.0)
    assert raised is not None and raised.payload("model_api") == {
        "alert": "raised", "service": "model_api", "drift": ["bmi"], "window_count": 300, "rule": "KS", "at": 2.0,
    }  # fmt: skip
    assert alert.check(report(["bmi", "prediction"], "drifted"), 3.0) is None  # still raised
    assert alert.check(report([], "collecting"), 4.0) is None  # not judged: no change
    cleared = alert.check(report([]), 5.0)
    assert cleared is not None and cleared.state == "cleared" and alert.since is None


def test_a_changing_window_is_assessed_again_at_most_every_reassess_s(model_and_reference: tuple[Any, Reference]) -> None:
    model, reference = model_and_reference
    monitor = DriftMonitor(reference, size=WINDOW, max_age_s=3600.0, reassess_s=1.0)
    rng = np.random.default_rng(4)
    rows = draw(rng, 50)
    monitor.observe(rows, model.predict(rows), 10.0)
    first = monitor.assess(10.0)
    more = draw(rng, 50)
    monitor.observe(more, model.predict(more), 10.5)
    assert monitor.assess(10.5) is first  # half a second later: the report of a moment ago
    assert monitor.assess(11.0)["window"]["count"] == 100  # a second later: the window as it is
    assert monitor.assess(50.0)["window"]["count"] == 100  # nothing new: the same report, however late
