"""One window's numbers: the percentiles read off sorted values are numpy's (the rest of the
arithmetic is checked against pandas through the statistics that use it: tests/unit/metric_api/test_stats.py)."""

import numpy as np
import pytest

from services.common.error_window import percentile_of_sorted


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentile_of_sorted_values_is_numpys(n: int) -> None:
    values = np.sort(np.random.default_rng(n).exponential(40, n))
    for q in (0, 1, 25, 50, 90, 95, 99, 100):
        assert percentile_of_sorted(values, q) == np.percentile(values, q)
