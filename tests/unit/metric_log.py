"""A metric log for plot_api's tests, written as metric_api writes it (services.common.metric_rows)."""

from pathlib import Path

import numpy as np

from services.common.metric_rows import METRIC_LOG_HEADER, MetricRow, format_rows

FIRST_ID = 1_700_000_000.0


def metric_rows(first: int, count: int, seed: int, spread: float = 40.0) -> list[MetricRow]:
    """Rows ``first`` .. ``first + count - 1``: labels in the target's range, predictions off by about ``spread``."""
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(25, 346, count)
    y_pred = y_true + rng.normal(0, spread, count)
    return [
        MetricRow.of(f"{FIRST_ID + first + i:.6f}", float(t), float(p))
        for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True))
    ]


def append(path: Path, rows: list[MetricRow]) -> None:
    """Append the rows' lines, with the header first if the file is new."""
    with path.open("a", encoding="utf-8") as f:
        f.write((METRIC_LOG_HEADER + "\n" if f.tell() == 0 else "") + format_rows(rows))
