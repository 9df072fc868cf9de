import io

import matplotlib.image
import numpy as np
import pytest

from services.plot_api.render import MAX_BINS, ErrorSummary, histogram_bins, render_histogram

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png(data: bytes) -> np.ndarray:
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def test_render_gives_a_png_that_decodes() -> None:
    errors = np.random.default_rng(0).exponential(45.0, 2000)
    data = render_histogram(errors)
    assert data.startswith(PNG_SIGNATURE)
    image = decode_png(data)
    height, width = image.shape[:2]
    assert width > 0 and height > 0
    assert width > height  # a landscape chart


def test_the_histogram_is_not_a_blank_image() -> None:
    image = decode_png(render_histogram(np.random.default_rng(1).exponential(45.0, 500)))
    pixels = image[..., :3].reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 10


def test_a_subtitle_changes_the_picture() -> None:
    errors = np.random.default_rng(2).exponential(45.0, 300)
    assert render_histogram(errors) != render_histogram(errors, subtitle="updated 12:00:00")


@pytest.mark.parametrize(
    "errors",
    [np.array([3.5]), np.zeros(50), np.full(1000, 42.0), np.array([0.0, 1e6])],
    ids=["one-value", "all-zero", "all-equal", "two-far-apart"],
)
def test_degenerate_data_still_renders(errors: np.ndarray) -> None:
    data = render_histogram(errors)
    assert data.startswith(PNG_SIGNATURE)
    assert decode_png(data).shape[1] > 0


def test_summary_equals_numpy_mean_and_median() -> None:
    errors = np.random.default_rng(3).exponential(45.0, 1001)
    summary = ErrorSummary.of(errors)
    assert summary.count == 1001
    assert summary.mean == pytest.approx(float(np.mean(errors)), rel=1e-12)
    assert summary.median == float(np.median(errors))


def test_summary_by_hand() -> None:
    summary = ErrorSummary.of(np.array([1.0, 2.0, 3.0, 10.0]))
    assert (summary.count, summary.mean, summary.median) == (4, 4.0, 2.5)


def test_an_empty_array_is_refused() -> None:
    with pytest.raises(ValueError):
        ErrorSummary.of(np.array([]))
    with pytest.raises(ValueError):
        render_histogram(np.array([]))


def test_a_million_values_get_at_most_max_bins() -> None:
    errors = np.random.default_rng(4).exponential(45.0, 1_000_000)
    edges = histogram_bins(errors)
    assert 1 <= len(edges) - 1 <= MAX_BINS
    assert edges[0] <= errors.min() and edges[-1] >= errors.max()
    assert np.all(np.diff(edges) > 0)


def test_a_million_values_render() -> None:
    errors = np.random.default_rng(5).exponential(45.0, 1_000_000)
    assert decode_png(render_histogram(errors)).shape[1] > 0


def test_a_few_values_keep_numpys_own_bins() -> None:
    errors = np.random.default_rng(6).exponential(45.0, 200)
    np.testing.assert_array_equal(histogram_bins(errors), np.histogram_bin_edges(errors, bins="auto"))


def test_a_narrow_bulk_with_one_outlier_is_capped() -> None:
    rng = np.random.default_rng(7)
    errors = np.concatenate([rng.normal(50.0, 1e-3, 100_000), [5000.0]])
    assert len(histogram_bins(errors)) - 1 <= MAX_BINS
