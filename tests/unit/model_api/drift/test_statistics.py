"""Every drift statistic against scipy on the same samples: continuous, heavily tied, shifted, far
from zero; and the claims the drift package makes about Evidently's thresholds and the z-test."""

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import special, stats
from scipy.spatial.distance import jensenshannon
from scipy.stats.contingency import chi2_contingency

from services.model_api.drift import (
    MIN_SAMPLES,
    DriftRule,
)
from services.model_api.drift.statistics import (
    SortedColumns,
    chi_square_homogeneity,
    jensen_shannon_distance,
    ks_and_wasserstein,
    ks_and_wasserstein_columns,
    population_stability_index,
    quantile_edges,
    share_p,
)
from tests.unit.model_api.drift.made import DATA, binned_counts

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
