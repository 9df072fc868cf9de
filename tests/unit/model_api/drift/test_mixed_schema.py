"""The monitor on a mixed schema made here: its numbers against scipy on the rows it holds, calm
windows calm, a shifted numeric or categorical column flagged by name, unseen and missing values."""

import json
import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.stats.contingency import chi2_contingency

from services.common import reference as reference_file
from services.common.reference import ReferenceTable
from services.common.schema import DIABETES, FeatureSchema, FeatureSpec
from services.model_api.drift import (
    MIN_SAMPLES,
    PREDICTION,
    BadReference,
    DriftMonitor,
    DriftRule,
    Reference,
)
from services.model_api.drift.reference import CategoricalReference, NumericReference
from tests.unit.model_api.drift.made import HOMES_NAMES, Homes, Row, binned_counts, homes_window, predict_homes


def test_the_reference_counts_each_column_as_the_table_holds_it(homes: tuple[Reference, ReferenceTable]) -> None:
    reference, table = homes
    city, income = reference.features[1], reference.features[3]
    assert isinstance(city, CategoricalReference) and isinstance(income, NumericReference)
    counts = Counter(table.columns[1])
    assert city.counts.tolist() == [counts[c] for c in reference.schema.features[1].categories] + [0, 0]
    present = table.columns[3][~np.isnan(table.columns[3])]
    assert (income.missing, income.count) == (np.isnan(table.columns[3]).sum(), present.size)
    assert income.summary() == pytest.approx(
        {"min": present.min(), "max": present.max(), "mean": present.mean(), "std": present.std(), "count": present.size}
    )
    assert reference.prediction.count == 5000 and reference.rows == 5000
    np.testing.assert_array_equal(reference.numeric.sorted.sample(1), np.sort(present))  # income is the second numeric column


def test_the_monitor_reports_scipys_numbers_for_the_rows_in_its_window(homes: tuple[Reference, ReferenceTable]) -> None:
    """Fed more than a window's worth, in batches over time, some shifted, with missing values and
    an unseen city, the monitor's numbers are scipy's on exactly the rows it should hold: the newest
    ``size`` of those within ``max_age_s``."""
    reference, table = homes
    rng = np.random.default_rng(3)
    monitor = DriftMonitor(reference, reference.schema, size=250, max_age_s=60.0)
    seen: list[tuple[float, Row, float]] = []
    for second in range(0, 100, 5):
        rows = Homes(rng, sqft_scale=float(rng.uniform(0.9, 1.3)), missing_income=0.3, unseen_city=0.05).rows(
            int(rng.integers(1, 40))
        )
        predictions = predict_homes(rows)
        monitor.observe(reference.schema.encode(rows), predictions, float(second))
        seen += [(float(second), row, float(p)) for row, p in zip(rows, predictions, strict=True)]
    now = 99.0
    expected = [(row, p) for at, row, p in seen if at >= now - 60.0][-250:]
    report = monitor.assess(now)
    assert json.loads(json.dumps(report, allow_nan=False)) == report  # plain JSON: no numpy types, no NaN
    assert report["window"]["count"] == len(expected) and report["window"]["seen"] == len(seen)
    assert list(report["features"]) == list(HOMES_NAMES)
    assert report["schema"] == {"features": 5, "numeric": 3, "categorical": 2}
    numeric = {"sqft": 0, "income": 3, "rooms": 4}
    for name, j in [*numeric.items(), (PREDICTION, -1)]:
        values = np.array([p if j < 0 else math.nan if row[j] is None else row[j] for row, p in expected], dtype=float)
        current = values[~np.isnan(values)]
        ref_values = table.prediction if j < 0 else table.columns[j][~np.isnan(table.columns[j])]
        column = report["prediction"] if j < 0 else report["features"][name]
        assert column["kind"] == "numeric"
        assert column["ks_statistic"] == pytest.approx(stats.ks_2samp(ref_values, current).statistic, abs=1e-12), name
        normed = stats.wasserstein_distance(ref_values, current) / np.std(ref_values)
        assert column["wasserstein_norm"] == pytest.approx(normed, rel=1e-9), name
        edges = np.unique(np.quantile(ref_values, np.arange(1, 10) / 10))  # deciles, repeated ones merged
        assert column["bins"]["edges"] == pytest.approx(edges.tolist(), rel=1e-12), name
        assert column["bins"]["current"] == binned_counts(current, edges).tolist(), name
        assert column["out_of_range_share"] == pytest.approx(
            np.mean((current < ref_values.min()) | (current > ref_values.max()))
        ), name
        assert column["missing_share"] == pytest.approx(1 - current.size / len(expected)), name
        assert column["window"] == pytest.approx(
            {"mean": current.mean(), "std": current.std(), "min": current.min(), "max": current.max(), "count": current.size}
        ), name
        ref_missing = int(np.isnan(table.prediction if j < 0 else table.columns[j]).sum())
        fisher = stats.fisher_exact(np.array([[ref_missing, 5000 - ref_missing], [len(expected) - current.size, current.size]]))
        assert column["missing_p"] == pytest.approx(fisher.pvalue, rel=1e-6), name
    expected_bins = {}
    for name, j in (("city", 1), ("channel", 2)):
        column = report["features"][name]
        labels = column["bins"]["labels"]
        counted = Counter(row[j] for row, _ in expected)
        categories = reference.schema.features[j].categories
        assert labels == [*categories, "(unseen)", "(missing)"]
        unseen = sum(n for value, n in counted.items() if value is not None and value not in categories)
        in_reference = Counter(table.columns[j])
        reference_bins = np.array([in_reference[c] for c in categories] + [0, in_reference[None]])
        current_bins = np.array([counted[c] for c in categories] + [unseen, counted[None]])
        expected_bins[name] = reference_bins, current_bins
        assert column["bins"]["reference"] == reference_bins.tolist() and column["bins"]["current"] == current_bins.tolist()
        assert column["unseen_share"] == pytest.approx(unseen / len(expected))
        assert column["chi2_statistic"] >= 0 and 0 <= column["chi2_p"] <= 1
        assert column["js"] == pytest.approx(jensenshannon(reference_bins / 5000, current_bins / len(expected)), abs=1e-7)
        top = counted.most_common(1)[0]
        assert column["window"]["top"][0]["share"] == pytest.approx(top[1] / len(expected))
    assert report["features"]["city"]["unseen_share"] > 0  # "Atlantis"
    # channel's four categories are each expected at least 5 times: the chi-square test is scipy's as is.
    table_2xk = np.array([bins[:4] for bins in expected_bins["channel"]])
    assert report["features"]["channel"]["chi2_p"] == pytest.approx(
        chi2_contingency(table_2xk, correction=False).pvalue, rel=1e-6
    )


def test_calm_windows_of_a_mixed_schema_flag_nothing(homes: tuple[Reference, ReferenceTable]) -> None:
    reference, _table = homes
    rng = np.random.default_rng(2025)
    alarms = [
        report["drifted"] for report in (homes_window(reference, Homes(rng).rows(300)) for _ in range(50)) if report["drifted"]
    ]
    assert len(alarms) <= 1, alarms


def test_a_shifted_numeric_column_is_flagged_by_name(homes: tuple[Reference, ReferenceTable]) -> None:
    reference, _table = homes
    report = homes_window(reference, Homes(np.random.default_rng(21), sqft_scale=1.25).rows(300))
    assert report["features"]["sqft"]["drifted"] and report["features"]["sqft"]["decided_by"] == "ks"
    # rooms follow sqft, and the model's price follows both; the categorical columns stay calm.
    assert set(report["drifted"]) <= {"sqft", "rooms", PREDICTION} and PREDICTION in report["drifted"]


def test_a_categorical_shift_is_flagged_on_that_column_and_nothing_else(homes: tuple[Reference, ReferenceTable]) -> None:
    reference, _table = homes
    report = homes_window(reference, Homes(np.random.default_rng(22), city_moved=0.3).rows(300))
    assert report["drifted"] == ["city"] and report["features"]["city"]["decided_by"] == "chi2"
    assert report["features"]["city"]["window"]["top"][0]["label"] == "city-20"


def test_an_unseen_category_is_counted_and_a_flood_of_them_flagged(homes: tuple[Reference, ReferenceTable]) -> None:
    reference, _table = homes
    rows = Homes(np.random.default_rng(23)).rows(300)
    for row in rows[:30]:
        row[1] = "Atlantis"
    report = homes_window(reference, rows)
    city = report["features"]["city"]
    assert city["unseen_share"] == pytest.approx(0.1) and city["bins"]["current"][-2] == 30
    # Pooled with the rare cities for the chi-square test, the unseen ones are tested on their own too.
    assert report["drifted"] == ["city"] and city["decided_by"] in ("chi2", "unseen")
    assert city["unseen_p"] <= DriftRule(6).threshold
    rows = Homes(np.random.default_rng(27)).rows(300)
    rows[0][1] = "Atlantis"
    one = homes_window(reference, rows)
    assert one["features"]["city"]["unseen_share"] == pytest.approx(1 / 300) and not one["drifted"]  # one is no flood


def test_a_jump_of_the_missing_share_is_flagged_by_the_missing_test(homes: tuple[Reference, ReferenceTable]) -> None:
    reference, _table = homes
    report = homes_window(reference, Homes(np.random.default_rng(24), missing_income=0.3).rows(300))
    income = report["features"]["income"]
    assert report["drifted"] == ["income"] and income["decided_by"] == "missing"
    assert income["reference_missing_share"] == pytest.approx(0.1, abs=0.015) and income["missing_share"] > 0.2
    # channel is never missing in the reference: 5 % missing in a window is flagged (by chi-square or the missing test).
    report = homes_window(reference, Homes(np.random.default_rng(25), missing_channel=0.05).rows(300))
    assert report["drifted"] == ["channel"] and report["features"]["channel"]["missing_p"] < DriftRule(6).threshold
    # Income missing in 95 % of the rows: its few values are shown (KS computed) but not judged; the missing share is.
    rows = Homes(np.random.default_rng(26), missing_income=0.95).rows(300)
    for row in rows:
        row[3] = None if row[3] is None else 2 * float(row[3])  # twice the income, where there is one
    income = homes_window(reference, rows)["features"]["income"]
    assert income["window"]["count"] < MIN_SAMPLES and income["ks_p"] < 1e-6 and income["decided_by"] == "missing"


def test_values_past_the_schemas_categories_share_one_bin_and_are_no_drift(homes: tuple[Reference, ReferenceTable]) -> None:
    """A schema keeps at most CATEGORIES_MAX categories; the reference's values past them and a
    window's (unseen, by position) are one bin, "(other)": a window like the reference is calm."""
    _reference, table = homes
    specs = list(table.schema.features)
    specs[1] = FeatureSpec("city", "categorical", specs[1].categories[:10])  # the 10 largest cities only
    schema = FeatureSchema(tuple(specs))
    reference = Reference.from_table(ReferenceTable(schema, table.columns, table.target, table.prediction, table.source))
    city = reference.features[1]
    assert isinstance(city, CategoricalReference) and city.labels[-2:] == ["(other)", "(missing)"]
    assert city.outside == sum(v not in schema.features[1].categories for v in table.columns[1])
    rng = np.random.default_rng(26)
    alarms = sum(bool(homes_window(reference, Homes(rng).rows(300))["drifted"]) for _ in range(20))
    assert alarms <= 1
    assert 0.2 < homes_window(reference, Homes(rng).rows(300))["features"]["city"]["unseen_share"] < 0.5


def test_an_unusable_reference_says_what_is_wrong(homes: tuple[Reference, ReferenceTable]) -> None:
    _reference, table = homes

    def with_column(j: int, column: np.ndarray) -> ReferenceTable:
        columns = list(table.columns)
        columns[j] = column
        return ReferenceTable(table.schema, tuple(columns), table.target, table.prediction, table.source)

    with pytest.raises(BadReference, match="feature 'income' is missing in all 5000 rows"):
        Reference.from_table(with_column(3, np.full(5000, np.nan)))
    with pytest.raises(BadReference, match="feature 'sqft' holds infinite values"):
        Reference.from_table(with_column(0, np.where(np.arange(5000) == 7, np.inf, table.columns[0])))
    with pytest.raises(BadReference, match="prediction is missing in all"):
        Reference.from_table(ReferenceTable(table.schema, table.columns, table.target, np.full(5000, np.nan), table.source))
    assert BadReference is reference_file.BadReference  # one class to catch, wherever the reference turned out unusable
    # A categorical column missing everywhere is usable: its window is compared over "(unseen)" and "(missing)".
    Reference.from_table(with_column(2, np.full(5000, None, dtype=object)))


def test_the_rule_is_bonferroni_over_the_features_and_the_prediction(homes: tuple[Reference, ReferenceTable]) -> None:
    reference, _table = homes
    rule = reference.rule
    assert rule.tests == 6 and rule.threshold == pytest.approx(0.01 / 6)
    assert rule.significant(0.01 / 6) and not rule.significant(0.0017) and not rule.significant(None)
    data = rule.to_json()
    assert (data["decides"], data["categorical"], data["missing"], data["tests"]) == ("ks", "chi2", "fisher", 6)
    assert "0.01 / 6" in data["text"] and "5 features" in data["text"]


def test_a_monitor_refuses_rows_of_another_width_and_a_reference_of_another_schema(
    homes: tuple[Reference, ReferenceTable],
) -> None:
    reference, _table = homes
    monitor = DriftMonitor(reference, reference.schema, 10, 60.0)
    with pytest.raises(ValueError, match="k × 5 features"):
        monitor.observe(np.zeros((2, 10)), np.zeros(2), 0.0)
    with pytest.raises(ValueError, match="not the model's"):
        DriftMonitor(reference, DIABETES, 10, 60.0)
