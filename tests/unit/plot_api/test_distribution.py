import math

import numpy as np
import pytest

from services.plot_api.distribution import BUCKETS, RELATIVE_ACCURACY, ErrorDistribution


def of(*batches: np.ndarray) -> ErrorDistribution:
    distribution = ErrorDistribution()
    for batch in batches:
        distribution.add(batch)
    return distribution


def test_count_mean_min_max_are_exact() -> None:
    errors = np.random.default_rng(1).exponential(45.0, 10_001)
    d = of(*np.array_split(errors, 7))
    assert d.count == 10_001
    assert d.mean == pytest.approx(float(np.mean(errors)), rel=1e-12)
    assert (d.minimum, d.maximum) == (errors.min(), errors.max())


@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0])
def test_quantiles_are_within_the_relative_accuracy(q: float) -> None:
    errors = np.random.default_rng(2).lognormal(3.5, 1.2, 200_001)
    expected = float(np.quantile(errors, q))
    assert of(errors).quantile(q) == pytest.approx(expected, rel=RELATIVE_ACCURACY)


def test_median_by_hand() -> None:
    assert of(np.array([1.0, 2.0, 3.0, 10.0])).median == pytest.approx(2.5, rel=RELATIVE_ACCURACY)
    assert of(np.array([7.0, 1.0, 3.0])).median == pytest.approx(3.0, rel=RELATIVE_ACCURACY)
    assert of(np.array([0.0, 0.0, 5.0])).median == 0.0
    assert of(np.full(9, 42.0)).median == 42.0  # clamped to the exact min and max


def test_memory_does_not_grow_with_rows() -> None:
    d = of(np.random.default_rng(3).exponential(45.0, 1_000_000), np.array([1e15, 0.0, 1e-9]))
    assert d._buckets.size == BUCKETS < 25_000
    assert d.count == 1_000_003 and d.maximum == 1e15
    assert d.quantile(1.0) == 1e15


def test_histogram_counts_every_row_once_and_matches_numpy_closely() -> None:
    errors = np.random.default_rng(4).exponential(45.0, 100_000)
    counts, edges = of(errors).histogram(60)
    assert counts.sum() == 100_000
    assert 1 <= len(counts) <= 60 and len(edges) == len(counts) + 1
    assert edges[0] == errors.min() and edges[-1] == errors.max()
    exact, _ = np.histogram(errors, bins=edges)
    # Only rows within the bucket accuracy of a bin edge may land in the next bin.
    assert np.abs(counts - exact).sum() < 0.05 * errors.size


def test_histogram_of_equal_values_is_one_centred_bar() -> None:
    counts, edges = of(np.full(10, 42.0)).histogram(60)
    assert counts.sum() == 10 and edges[0] < 42 < edges[-1]
    assert counts.max() == 10


def test_a_few_values_keep_numpys_bin_count() -> None:
    errors = np.random.default_rng(6).exponential(45.0, 200)
    counts, _ = of(errors).histogram(60)
    assert abs(len(counts) - (len(np.histogram_bin_edges(errors, bins="auto")) - 1)) <= 1


@pytest.mark.parametrize("bad", [[-1.0], [math.nan], [math.inf]])
def test_bad_errors_are_refused_whole(bad: list[float]) -> None:
    d = of(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="must be finite and non-negative"):
        d.add(np.array([3.0, *bad]))
    assert d.count == 2 and d.mean == 1.5


def test_no_rows_means_no_statistics() -> None:
    d = ErrorDistribution()
    d.add(np.array([]))
    for ask in (lambda: d.mean, lambda: d.median, lambda: d.histogram(60)):
        with pytest.raises(ValueError, match="no errors yet"):
            ask()
    with pytest.raises(ValueError, match=r"between 0 and 1, not 1\.5"):
        of(np.array([1.0])).quantile(1.5)
