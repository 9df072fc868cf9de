"""How segments are ranked, worst first: by a bound that a segment of 3 rows does not top by chance.
No I/O; metric_api computes it for the summary, plot_api again for segments merged over shards."""

import math
from typing import Any

from services.common.error_window import finite_or_none

Z_95 = 1.959963984540054


def mae_low(window: dict[str, Any]) -> float | None:
    """The lower bound of the 95% confidence interval of a window's MAE, from its count, mae and rmse
    (rmse² is the mean of |e|²): mae − 1.96 · s/√n, s the sample standard deviation of |e|. None below
    2 rows: one row says nothing of the spread."""
    n, mae, rmse = window.get("count"), window.get("mae"), window.get("rmse")
    if not isinstance(n, int) or n < 2 or mae is None or rmse is None:
        return None
    variance = max(0.0, float(rmse) ** 2 - float(mae) ** 2) * n / (n - 1)
    return finite_or_none(float(mae) - Z_95 * math.sqrt(variance / n))
