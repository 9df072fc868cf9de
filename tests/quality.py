"""The model-quality numbers of /metrics/summary, computed independently with pandas and
scikit-learn from the rows themselves: what the service's numbers are checked against."""

import json
import math
from typing import Any

import pandas as pd
from sklearn.metrics import r2_score

FIELDS = ("count", "mae", "rmse", "me", "mape", "r2", "max_ae", "p50_ae", "p90_ae", "p95_ae", "baseline_mae", "skill")


def expected_window(rows: pd.DataFrame, baseline: float | None) -> dict[str, Any]:
    """The twelve numbers of a window, from its rows (columns y_true and y_pred)."""
    if len(rows) == 0:
        return {name: (0 if name == "count" else None) for name in FIELDS}
    y_true, y_pred = rows["y_true"].astype(float), rows["y_pred"].astype(float)
    signed = y_pred - y_true
    absolute = signed.abs()
    nonzero = y_true != 0
    mae = absolute.mean()
    baseline_mae = (y_true - baseline).abs().mean() if baseline is not None else None
    return {
        "count": len(rows),
        "mae": mae,
        "rmse": math.sqrt((signed**2).mean()),
        "me": signed.mean(),
        "mape": (absolute[nonzero] / y_true[nonzero].abs()).mean() if nonzero.any() else None,
        "r2": r2_score(y_true, y_pred) if len(rows) >= 2 and y_true.nunique() > 1 else None,  # noqa: PD101 - an oracle: plain beats fast
        "max_ae": absolute.max(),
        "p50_ae": absolute.quantile(0.5),
        "p90_ae": absolute.quantile(0.9),
        "p95_ae": absolute.quantile(0.95),
        "baseline_mae": baseline_mae,
        "skill": 1 - mae / baseline_mae if baseline_mae else None,
    }


def differences(actual: dict[str, Any], expected: dict[str, Any], rel: float = 1e-9) -> list[str]:
    """The fields that differ by more than ``rel`` (relative; absolute for values near 0)."""
    problems = []
    assert set(actual) >= set(FIELDS), f"missing fields: {set(FIELDS) - set(actual)}"
    for name in FIELDS:
        got, want = actual[name], expected[name]
        if want is None or got is None:
            if got is not want:
                problems.append(f"{name}: {got!r} != {want!r}")
        elif not math.isclose(got, float(want), rel_tol=rel, abs_tol=rel):
            problems.append(f"{name}: {got!r} != {float(want)!r}")
    return problems


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def strict_json(text: str | bytes) -> Any:
    """Parse JSON refusing NaN and Infinity (Python's json module accepts them by default)."""
    return json.loads(text, parse_constant=_refuse)
