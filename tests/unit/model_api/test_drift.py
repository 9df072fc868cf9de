"""The drift core: every statistic against scipy on the same samples (continuous, heavily tied,
shifted, far from zero); the window against a plain list; the monitor's numbers against scipy on
the rows it should hold; and the decision, on the diabetes demo as train writes it (no more than
one false alarm in 20 calm windows, a one-std shift of bmi flagged on bmi and the prediction within
one window) and on schemas made here: a mixed one (numeric, categorical, missing values) and one
of 200 features. The claims the module's docstring makes about Evidently's distance thresholds
and the two-proportion z-test are measured here too, with scipy."""

import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import special, stats
from scipy.spatial.distance import jensenshannon
from scipy.stats.contingency import chi2_contingency
from sklearn.datasets import load_diabetes

from services.common import reference as reference_file
from services.common.reference import ReferenceTable, read_reference
from services.common.schema import DIABETES, FeatureSchema, FeatureSpec
from services.common.settings import Settings
from services.model_api.drift import (
    MIN_SAMPLES,
    PREDICTION,
    BadReference,
    CategoricalReference,
    DriftAlert,
    DriftMonitor,
    DriftRule,
    NumericReference,
    Reference,
    SlidingWindow,
    SortedColumns,
    chi_square_homogeneity,
    jensen_shannon_distance,
    ks_and_wasserstein,
    ks_and_wasserstein_columns,
    population_stability_index,
    quantile_edges,
    share_p,
)
from services.model_api.train import DEFAULT_SEED, MODELS, diabetes_split, train

DATA = load_diabetes().data  # what the demo draws its rows from, and its reference holds
NAMES = list(DIABETES.names)
BMI = NAMES.index("bmi")
WINDOW = Settings.model_fields["DRIFT_WINDOW_SIZE"].default  # the documented default window


# -- statistics against scipy


def sample_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Reference and window samples: continuous, heavily tied (as sex, with two values), shifted,
    far from zero (prices), a large reference, a window holding reference values, and the diabetes columns."""
    rng = np.random.default_rng(7)
    pairs = []
    for m in (1, 30, 100, 300):
        for shift in (0.0, 0.3, 1.0):
            pairs.append((rng.normal(size=353), rng.normal(loc=shift, size=m)))
            pairs.append((rng.choice([-0.04, 0.05], size=353), rng.choice([-0.04, 0.05], size=m) + shift * 0.05))
            pairs.append((rng.poisson(3, size=2000).astype(float), rng.poisson(3 + 2 * shift, size=m).astype(float)))
            pairs.append((1e6 + 1e3 * rng.lognormal(size=10_000), 1e6 + 1e3 * rng.lognormal(mean=shift, size=m)))
            distinct = rng.normal(size=500)  # no value repeats; the window holds some of them exactly
            pairs.append((distinct, np.concatenate([rng.choice(distinct, size=m // 2), rng.normal(loc=shift, size=m - m // 2)])))
        column = int(rng.integers(10))
        pairs.append((DATA[rng.choice(442, 353, replace=False), column], DATA[rng.integers(442, size=m), column]))
    return pairs


PAIRS = sample_pairs()


@pytest.mark.parametrize(("reference", "current"), PAIRS)
def test_the_ks_statistic_and_the_wasserstein_distance_are_scipys(reference: np.ndarray, current: np.ndarray) -> None:
    statistic, _p, wasserstein = ks_and_wasserstein(reference, current)
    assert statistic == pytest.approx(stats.ks_2samp(reference, current).statistic, abs=1e-12)
    assert wasserstein == pytest.approx(stats.wasserstein_distance(reference, current), rel=1e-9, abs=1e-9)


def test_columns_of_different_lengths_with_missing_values_are_each_scipys() -> None:
    """Side by side: references of different sizes, window columns with their values first and
    NaN (missing) after, one with no value at all."""
    rng = np.random.default_rng(8)
    references = [rng.normal(size=500), rng.integers(0, 3, size=40).astype(float), 1e5 + rng.exponential(size=3000)]
    currents = [rng.normal(0.5, size=200), rng.integers(0, 4, size=75).astype(float), np.array([])]
    window = np.full((200, 3), np.nan)
    for j, current in enumerate(currents):
        window[: current.size, j] = np.sort(current)
    statistic, p_value, wasserstein = ks_and_wasserstein_columns(
        SortedColumns.of(references), np.arange(3), window, np.array([c.size for c in currents])
    )
    for j in range(2):
        assert statistic[j] == pytest.approx(stats.ks_2samp(references[j], currents[j]).statistic, abs=1e-12)
        assert wasserstein[j] == pytest.approx(stats.wasserstein_distance(references[j], currents[j]), rel=1e-9)
        assert 0 < p_value[j] < 1
    assert np.isnan([statistic[2], p_value[2], wasserstein[2]]).all()


@pytest.mark.parametrize(("reference", "current"), [pair for pair in PAIRS if pair[1].size >= MIN_SAMPLES])
def test_the_ks_p_value_is_within_a_few_per_cent_of_scipys_exact_one(reference: np.ndarray, current: np.ndarray) -> None:
    _d, p_value, _w = ks_and_wasserstein(reference, current)
    exact = stats.ks_2samp(reference, current, method="exact").pvalue
    assert abs(p_value - exact) <= 0.025
    if exact >= 1e-3:
        assert p_value == pytest.approx(exact, rel=0.07)  # Stephens: 5.7 % off at worst here (n 500, m 100, p 0.008)


def test_the_ks_decision_is_scipys_on_the_diabetes_columns() -> None:
    """Over shifts from none to one std of every column, the Bonferroni-corrected decision agrees
    with one on scipy's exact p-value, but where that p-value is within 10 % of the threshold."""
    rng = np.random.default_rng(11)
    alpha = DriftRule(11).threshold
    checked = 0
    for column in range(10):
        reference = DATA[:, column]
        for shift in np.linspace(0, 1, 21):
            current = DATA[rng.integers(442, size=int(rng.integers(MIN_SAMPLES, 400))), column] + shift * DATA[:, column].std()
            exact = stats.ks_2samp(reference, current).pvalue
            if abs(exact / alpha - 1) > 0.1:
                assert (ks_and_wasserstein(reference, current)[1] <= alpha) == (exact <= alpha), (column, shift)
                checked += 1
    assert checked > 150


def binned_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The counts per bin, bins right-closed (edges[i-1] < x <= edges[i]), by numpy's digitize."""
    return np.bincount(np.digitize(values, edges, right=True), minlength=edges.size + 1)


@pytest.mark.parametrize(("reference", "current"), PAIRS)
def test_psi_and_jensen_shannon_are_scipys_on_the_reference_bins(reference: np.ndarray, current: np.ndarray) -> None:
    edges = quantile_edges(reference)
    ref_counts, cur_counts = binned_counts(reference, edges), binned_counts(current, edges)
    p, q = ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
    # PSI is the symmetric Kullback–Leibler divergence of the shares, an empty bin counting 1e-4
    # (not renormalised, as Evidently: so scipy's rel_entr, not its entropy, which renormalises).
    p_, q_ = np.where(p == 0, 1e-4, p), np.where(q == 0, 1e-4, q)
    expected_psi = np.sum(special.rel_entr(q_, p_) + special.rel_entr(p_, q_))
    assert float(population_stability_index(ref_counts, cur_counts)) == pytest.approx(expected_psi, rel=1e-9, abs=1e-12)
    assert float(jensen_shannon_distance(ref_counts, cur_counts)) == pytest.approx(jensenshannon(p, q), rel=1e-9, abs=1e-7)


def test_psi_and_jensen_shannon_of_many_columns_at_once_are_each_columns() -> None:
    """Columns side by side, one with fewer bins (padded with bins empty in both, which add nothing)."""
    rng = np.random.default_rng(9)
    reference, current = rng.integers(1, 50, size=(6, 10)), rng.integers(1, 50, size=(6, 10))
    reference[2, 7:] = current[2, 7:] = 0
    psi, js = population_stability_index(reference, current), jensen_shannon_distance(reference, current)
    for j in range(6):
        bins = 7 if j == 2 else 10
        p, q = reference[j, :bins] / reference[j].sum(), current[j, :bins] / current[j].sum()
        assert psi[j] == pytest.approx(np.sum(special.rel_entr(q, p) + special.rel_entr(p, q)), rel=1e-9)
        assert js[j] == pytest.approx(jensenshannon(p, q), abs=1e-7)


def categorical_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Reference and window counts over categories, every expected count at least 5 (no pooling)."""
    rng = np.random.default_rng(12)
    pairs = []
    for k in (2, 4, 12):
        p = rng.dirichlet(np.full(k, 5.0)) * 0.9 + 0.1 / k
        for moved in (0.0, 0.1, 0.3):
            q = (1 - moved) * p + moved * np.eye(k)[k - 1]
            pairs.append((rng.multinomial(5000, p), rng.multinomial(300, q)))
    return pairs


@pytest.mark.parametrize(("reference", "current"), categorical_pairs())
def test_the_chi_square_test_is_scipys_where_every_bin_is_expected_at_least_5(reference: np.ndarray, current: np.ndarray) -> None:
    table = np.array([reference, current])
    expected = stats.contingency.expected_freq(table)
    assert expected.min() >= 5
    statistic, p_value, dof = chi_square_homogeneity(reference, current)
    scipy_statistic, scipy_p, scipy_dof, _ = chi2_contingency(table, correction=False)
    assert statistic == pytest.approx(scipy_statistic, rel=1e-9) and dof == scipy_dof
    assert p_value == pytest.approx(scipy_p, rel=1e-6, abs=1e-300)


def test_the_chi_square_test_pools_the_bins_expected_below_5() -> None:
    # 10,000 reference rows and 300 window rows: a bin is expected (300 / 10,300)·(its count in both) times in the window.
    reference = np.array([6000, 3000, 700, 200, 60, 30, 10, 0])
    current = np.array([150, 90, 30, 5, 10, 9, 6, 0])
    # Expected in the window: 179.5, 90, 21.3, 5.97, 2.04, 1.14, 0.47, (empty in both: dropped). The last
    # three pooled (ref 100, window 25: expected 3.64, still below 5) then merged into the smallest other
    # bin, the fourth (ref 300, window 30).
    pooled = np.array([[6000, 3000, 700, 300], [150, 90, 30, 30]])
    statistic, p_value, dof = chi_square_homogeneity(reference, current)
    scipy_statistic, scipy_p, scipy_dof, _ = chi2_contingency(pooled, correction=False)
    assert statistic == pytest.approx(scipy_statistic) and p_value == pytest.approx(scipy_p) and dof == scipy_dof
    assert chi_square_homogeneity(np.array([100, 0]), np.array([0, 0])) == (0.0, 1.0, 0)  # an empty window: nothing to test
    assert chi_square_homogeneity(np.array([100, 1]), np.array([30, 1]))[1:] == (1.0, 0)  # one bin left after pooling


def test_the_missing_share_test_is_fishers_exact_test() -> None:
    rng = np.random.default_rng(13)
    cases = [(0, 442, 0, 300), (0, 442, 3, 300), (1, 10_000, 1, 300), (5000, 10_000, 150, 300), (30, 300, 300, 300)]
    for _ in range(200):
        n, m = int(rng.integers(2, 12_000)), int(rng.integers(1, 500))
        share = float(rng.choice([0.0, 0.001, 0.05, 0.5]))
        cases.append((int(rng.binomial(n, share)), n, int(rng.binomial(m, min(1.0, share * rng.uniform(0.5, 3)))), m))
    for ref_missing, n, cur_missing, m in cases:
        expected = stats.fisher_exact(np.array([[ref_missing, n - ref_missing], [cur_missing, m - cur_missing]])).pvalue
        case = (ref_missing, n, cur_missing, m)
        assert share_p(*case) == pytest.approx(expected, rel=1e-6, abs=1e-300), case


def test_the_two_proportion_z_test_would_flag_two_missing_values_in_a_window_where_fishers_does_not() -> None:
    """The docstring's reason for Fisher's exact test: a reference with 1 missing value in 10,000 and
    a window with 2 in 300. The z-test's normal approximation puts that at p ≈ 5e-11, an alarm even
    at 0.01 / 201; the exact p-value is about 0.0025."""
    n, m, a, b = 10_000, 300, 1, 2
    pooled = (a + b) / (n + m)
    z = (b / m - a / n) / math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
    z_p = math.erfc(abs(z) / math.sqrt(2))
    assert z_p < 1e-10 < DriftRule(201).threshold
    assert share_p(a, n, b, m) == pytest.approx(0.0025, abs=0.0001) and share_p(a, n, b, m) > DriftRule(11).threshold


def test_evidently_s_distance_thresholds_flag_calm_windows_of_300() -> None:
    """The docstring's reason for tests rather than Evidently's thresholds for a large reference, by
    scipy: windows of 300 drawn like a 10,000-row reference have a normed Wasserstein distance of
    about 0.07 (at least 0.1 in about one window in seven), and over 30 categories a Jensen–Shannon
    distance of about 0.11 (at least 0.1 in most windows)."""
    rng = np.random.default_rng(14)
    draws: list[Callable[[int], np.ndarray]] = [
        lambda size: rng.normal(size=size),
        lambda size: rng.lognormal(size=size),
        lambda size: rng.poisson(3, size=size).astype(float),
    ]
    for draw in draws:
        reference = draw(10_000)
        normed = np.array([stats.wasserstein_distance(reference, draw(300)) / reference.std() for _ in range(300)])
        assert 0.055 < float(np.median(normed)) < 0.085
        assert 0.07 < float(np.mean(normed >= 0.1)) < 0.3
    shares = 1 / np.arange(1, 31) ** 1.1
    shares /= shares.sum()
    reference_counts = rng.multinomial(10_000, shares)
    js = np.array([jensenshannon(reference_counts / 10_000, rng.multinomial(300, shares) / 300) for _ in range(300)])
    assert 0.09 < float(np.median(js)) < 0.13 and float(np.mean(js >= 0.1)) > 0.5


# -- the window


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


# -- a mixed schema, made here


Row = list[float | str | None]
CITIES = tuple(f"city-{i:02d}" for i in range(30))
CITY_SHARES = (1 / np.arange(1, 31) ** 1.1) / (1 / np.arange(1, 31) ** 1.1).sum()  # a few large cities, many small
CHANNELS = ("web", "app", "phone", "store")
CHANNEL_SHARES = np.array([0.5, 0.3, 0.15, 0.05])


@dataclass
class Homes:
    """House prices: sqft (log-normal), rooms (whole numbers: ties), income (10 % missing), city
    (30 categories), channel (4). The model ignores city and channel, so that moving them moves
    nothing else."""

    rng: np.random.Generator
    sqft_scale: float = 1.0
    missing_income: float = 0.1
    city_moved: float = 0.0  # this share of rows goes to the city ``moved_to``
    moved_to: str = "city-20"
    unseen_city: float = 0.0  # this share of rows is in a city the reference never showed
    missing_channel: float = 0.0

    def rows(self, count: int) -> list[Row]:
        rng = self.rng
        sqft = 1200 * rng.lognormal(sigma=0.4, size=count) * self.sqft_scale
        rooms = np.clip(np.round(sqft / 450 + rng.normal(0, 0.7, size=count)), 1, 9)
        income = rng.normal(60_000, 15_000, size=count)
        city = rng.choice(CITIES, p=CITY_SHARES, size=count).astype(object)
        city[rng.random(count) < self.city_moved] = self.moved_to
        city[rng.random(count) < self.unseen_city] = "Atlantis"
        channel = rng.choice(CHANNELS, p=CHANNEL_SHARES, size=count).astype(object)
        channel[rng.random(count) < self.missing_channel] = None
        missing = rng.random(count) < self.missing_income
        return [
            [float(sqft[i]), str(city[i]), channel[i], None if missing[i] else float(income[i]), float(rooms[i])]
            for i in range(count)
        ]


HOMES_NAMES = ("sqft", "city", "channel", "income", "rooms")


def predict_homes(rows: Sequence[Row]) -> np.ndarray:
    def number(value: float | str | None) -> float:
        return 60_000.0 if value is None else float(value)

    return np.array([150 * number(r[0]) + 8000 * number(r[4]) + 0.5 * number(r[3]) for r in rows])


def homes_schema(rows: Sequence[Row]) -> FeatureSchema:
    """As profiling infers it: the categories the reference shows, the most frequent first."""
    specs = []
    for j, name in enumerate(HOMES_NAMES):
        values = [row[j] for row in rows]
        missing = sum(v is None for v in values) / len(values)
        if name in ("city", "channel"):
            counts = Counter(str(v) for v in values if v is not None)
            specs.append(FeatureSpec(name, "categorical", tuple(c for c, _ in counts.most_common()), missing))
        else:
            specs.append(FeatureSpec(name, "numeric", missing_share=missing))
    return FeatureSchema(tuple(specs))


def table_of(schema: FeatureSchema, rows: Sequence[Row], predictions: np.ndarray, source: str) -> ReferenceTable:
    columns = []
    for j, spec in enumerate(schema.features):
        values = [row[j] for row in rows]
        if spec.numeric:
            columns.append(np.array([math.nan if v is None else v for v in values], dtype=float))
        else:
            columns.append(np.array(values, dtype=object))
    return ReferenceTable(schema, tuple(columns), np.zeros(len(rows)), predictions, source)


@pytest.fixture(scope="module")
def homes() -> tuple[Reference, ReferenceTable]:
    rows = Homes(np.random.default_rng(100)).rows(5000)
    schema = homes_schema(rows)
    table = table_of(schema, rows, predict_homes(rows), "homes made in the test")
    return Reference.from_table(table), table


def homes_window(reference: Reference, rows: Sequence[Row]) -> dict[str, Any]:
    monitor = DriftMonitor(reference, reference.schema, size=len(rows), max_age_s=3600.0)
    monitor.observe(reference.schema.encode(rows), predict_homes(rows), 0.0)
    report = monitor.assess(0.0)
    assert report["status"] in ("calm", "drifted")
    return report


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


# -- the diabetes demo, as train writes it


@dataclass(frozen=True)
class Demo:
    reference: Reference
    predict: Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """train's model and reference, read back as model_api reads them; the model fitted again as
    train fits it (its predictions are the reference's: checked)."""
    path: Path = tmp_path_factory.mktemp("demo") / "m.pkl"
    metadata = train(path)
    loaded = read_reference(path, metadata, FeatureSchema.from_json(metadata["schema"]))
    assert not isinstance(loaded, str), loaded
    split = diabetes_split(DEFAULT_SEED)
    model = MODELS["linear"](DEFAULT_SEED).fit(split.x_train, split.y_train)
    np.testing.assert_allclose(model.predict(DATA), loaded.table.prediction, rtol=1e-9)

    def predict(rows: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(rows), dtype=float)

    return Demo(Reference.from_table(loaded.table), predict)


def draw(rng: np.random.Generator, count: int, shift_bmi: float = 0.0) -> np.ndarray:
    """Rows as the demo sends them (uniformly from the diabetes data), bmi shifted in std units."""
    rows: np.ndarray = DATA[rng.integers(len(DATA), size=count)].copy()
    rows[:, BMI] += shift_bmi * DATA[:, BMI].std()
    return rows


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
    assert raised is not None and raised.payload("model_api") == {
        "alert": "raised", "service": "model_api", "drift": ["bmi"], "window_count": 300, "rule": "KS", "at": 2.0,
    }  # fmt: skip
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


# -- a schema of 200 features


@dataclass(frozen=True)
class Wide:
    """200 features: 150 numeric (normal, log-normal, Poisson counts, normal with 10 % missing) and
    50 categorical (2 to 40 categories, Zipf-like shares, some 5 % missing); the prediction a sum."""

    kinds: tuple[tuple[str, int, float], ...]

    @classmethod
    def make(cls) -> "Wide":
        kinds = []
        for j in range(200):
            if j % 4 == 3:
                kinds.append(("categorical", 2 + (j * 7) % 39, 0.05 if j % 8 == 3 else 0.0))
            else:
                kinds.append((("normal", "lognormal", "poisson", "normal")[j % 4], 0, 0.1 if j % 8 == 0 else 0.0))
        return cls(tuple(kinds))

    def columns(self, rng: np.random.Generator, rows: int) -> list[np.ndarray]:
        out = []
        for kind, categories, missing in self.kinds:
            if kind == "categorical":
                shares = 1 / np.arange(1, categories + 1) ** 1.1
                column = np.array([f"c{i}" for i in rng.choice(categories, rows, p=shares / shares.sum())], dtype=object)
                column[rng.random(rows) < missing] = None
            else:
                if kind == "poisson":
                    column = rng.poisson(3, size=rows).astype(float)
                else:
                    column = rng.normal(size=rows) if kind == "normal" else rng.lognormal(size=rows)
                column[rng.random(rows) < missing] = np.nan
            out.append(column)
        return out

    def schema(self, columns: list[np.ndarray]) -> FeatureSchema:
        specs = []
        for j, ((kind, _k, _m), column) in enumerate(zip(self.kinds, columns, strict=True)):
            if kind == "categorical":
                counts = Counter(v for v in column if v is not None)
                specs.append(FeatureSpec(f"f{j:03d}", "categorical", tuple(c for c, _ in counts.most_common())))
            else:
                specs.append(FeatureSpec(f"f{j:03d}", "numeric"))
        return FeatureSchema(tuple(specs))


def prediction_of(columns: list[np.ndarray]) -> np.ndarray:
    numeric = np.column_stack([c for c in columns if c.dtype != object])
    return np.asarray(np.nansum(numeric[:, :20], axis=1), dtype=float)


def test_a_schema_of_200_features_is_calm_on_calm_windows() -> None:
    wide = Wide.make()
    rng = np.random.default_rng(200)
    columns = wide.columns(rng, 10_000)
    schema = wide.schema(columns)
    reference = Reference.from_table(ReferenceTable(schema, tuple(columns), np.zeros(10_000), prediction_of(columns), "wide"))
    alarms: list[list[tuple[str, str]]] = []
    took = []
    for _ in range(20):
        window = wide.columns(rng, 300)
        rows = [[None if (isinstance(v, float) and math.isnan(v)) else v for v in row] for row in zip(*window, strict=True)]
        monitor = DriftMonitor(reference, schema, 300, 3600.0)
        monitor.observe(schema.encode(rows), prediction_of(window), 0.0)
        started = time.perf_counter()
        report = monitor.assess(0.0)
        took.append(time.perf_counter() - started)
        assert report["status"] in ("calm", "drifted") and len(report["features"]) == 200
        assert report["schema"] == {"features": 200, "numeric": 150, "categorical": 50}
        if report["drifted"]:
            alarms.append(
                [(name, report["features"].get(name, report["prediction"])["decided_by"]) for name in report["drifted"]]
            )
    print(f"200 features, 10,000 reference rows, window 300: one assessment {np.median(took) * 1e3:.1f} ms (median of 20)")
    print(f"calm windows with an alarm: {alarms}")
    assert len(alarms) <= 1, alarms
    # And it sees a change: one numeric and one categorical column moved.
    window = wide.columns(rng, 300)
    window[4] = window[4] + 0.5  # a normal column, half a std
    window[7] = np.where(rng.random(300) < 0.3, "c1", window[7])
    rows = [[None if (isinstance(v, float) and math.isnan(v)) else v for v in row] for row in zip(*window, strict=True)]
    monitor = DriftMonitor(reference, schema, 300, 3600.0)
    monitor.observe(schema.encode(rows), prediction_of(window), 0.0)
    assert {"f004", "f007"} <= set(monitor.assess(0.0)["drifted"]) <= {"f004", "f007", PREDICTION}
