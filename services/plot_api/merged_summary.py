"""One summary over every shard of the join: the shards' ``/metrics/summary`` answers merged,
and the union of their rows for what only the rows can tell. No I/O.

- Exact over the union: ``count``, ``mae``, ``rmse`` and the whole ``windows.all`` window
  (r2 and the percentiles too), computed from every row plot_api read from the shards
  (``ShardRowsTail.union``); ``baseline_mae`` and ``skill`` from the shards' (weighted by count).
- Exact from the shards' figures: sums (join counters, labels, rows_per_s, excluded_rows) and,
  per model version and for ``last_5m``, count, mae (weighted by count), rmse (from the sums
  of squares, n·rmse²), me, max_ae, baseline_mae and skill; mape weighted by count (exact
  unless some labels are 0, which mape leaves out).
- Not mergeable from summaries, so null there: r2 and the percentiles per model version and
  for ``last_5m``. Approximate, said in ``approximate``: ``last_100``/``last_1000`` are the newest
  rows as plot_api received them (shards interleaved by look), and the timing percentiles
  (latency, join lag, label lag) are the largest of the shards' (an upper bound).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.metric_api.stats import WINDOW_FIELDS, empty_window, finite_or_none

APPROXIMATE = (
    "windows.last_100 and windows.last_1000: the newest rows as plot_api received them from the shards",
    "windows.last_5m and by_model_version: r2 and the percentiles are null (they do not merge from summaries)",
    "latency, join.lag_*, labels.lag_*: the largest of the shards' percentiles (an upper bound)",
)


@dataclass(frozen=True)
class ShardSummary:
    """One shard's answer: its summary, or why there is none; and the rows read of it."""

    url: str
    summary: Mapping[str, Any] | None
    problem: str | None = None
    rows_read: int = 0


def merge_windows(windows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The twelve numbers of the union of disjoint windows, from each window's numbers: what
    merges exactly (see the module's docstring), null for what does not (r2, percentiles)."""
    counted = [w for w in windows if w.get("count")]
    n = sum(int(w["count"]) for w in counted)
    if n == 0:
        return empty_window()

    def weighted(name: str, square: bool = False) -> float | None:
        if any(w.get(name) is None for w in counted):
            return None
        values = [(int(w["count"]), float(w[name])) for w in counted]
        if square:
            return math.sqrt(sum(k * v * v for k, v in values) / n)
        return sum(k * v for k, v in values) / n

    mape = [(int(w["count"]), w["mape"]) for w in counted if w.get("mape") is not None]
    maxima = [w["max_ae"] for w in counted if w.get("max_ae") is not None]
    mae, baseline_mae = weighted("mae"), weighted("baseline_mae")
    merged: dict[str, Any] = {
        "count": n,
        "mae": mae,
        "rmse": weighted("rmse", square=True),
        "me": weighted("me"),
        "mape": sum(k * v for k, v in mape) / sum(k for k, _ in mape) if mape else None,
        "r2": None,
        "max_ae": max(maxima) if maxima else None,
        "p50_ae": None,
        "p90_ae": None,
        "p95_ae": None,
        "baseline_mae": baseline_mae,
        "skill": 1.0 - mae / baseline_mae if mae is not None and baseline_mae else None,
    }
    assert tuple(merged) == WINDOW_FIELDS
    return {name: value if name == "count" else finite_or_none(value) for name, value in merged.items()}


def _sum_nested(values: Sequence[Any]) -> Any:
    """Numbers summed, dicts summed key by key (the waiting halves by kind and age)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, dict) for v in present):
        keys = dict.fromkeys(k for v in present for k in v)
        return {k: _sum_nested([v.get(k) for v in present]) for k in keys}
    numbers = [v for v in present if isinstance(v, int | float) and not isinstance(v, bool)]
    return sum(numbers) if numbers else None


def _largest(values: Sequence[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float)]
    return max(numbers) if numbers else None


def merge_summaries(shards: Sequence[ShardSummary], union: Mapping[str, Any]) -> dict[str, Any]:
    """The summary over every shard. ``union`` is ``QualityStats.summary()`` over the rows read
    from all the shards; a shard without a summary is named in ``missing`` (its rows read so far
    still count in ``windows.all``)."""
    answered = [shard.summary for shard in shards if shard.summary is not None]
    windows = {name: window for name, window in union["windows"].items() if name != "last_5m"}
    all_rows = dict(windows["all"])
    shard_all = merge_windows([s["windows"]["all"] for s in answered])
    all_rows["baseline_mae"] = shard_all["baseline_mae"]
    all_rows["skill"] = finite_or_none(
        1.0 - all_rows["mae"] / shard_all["baseline_mae"] if all_rows["mae"] is not None and shard_all["baseline_mae"] else None
    )
    windows["all"] = all_rows
    windows["last_5m"] = merge_windows([s["windows"]["last_5m"] for s in answered])
    versions = dict.fromkeys(v for s in answered for v in s.get("by_model_version", {}))
    joins = [s.get("join", {}) for s in answered]
    labels = [s.get("labels", {}) for s in answered]
    predictions = _sum_nested([entry.get("predictions") for entry in labels]) or 0
    labelled = all_rows["count"]
    newest = max(answered, key=lambda s: s.get("last_row_at") or -math.inf, default=None)
    raised = [s["alert"] for s in answered if s.get("alert") and s["alert"].get("state") == "raised"]
    return {
        "count": all_rows["count"],
        "mae": all_rows["mae"],
        "rmse": all_rows["rmse"],
        "windows": windows,
        "by_model_version": {
            version: merge_windows([s["by_model_version"][version] for s in answered if version in s["by_model_version"]])
            for version in versions
        },
        "join": {
            **{key: _sum_nested([j.get(key) for j in joins]) or 0 for key in dict.fromkeys(k for j in joins for k in j)},
            "lag_p50_s": _largest([j.get("lag_p50_s") for j in joins]),
            "lag_p99_s": _largest([j.get("lag_p99_s") for j in joins]),
        },
        "labels": {
            "predictions": predictions,
            "labelled": labelled,
            "labelled_share": labelled / predictions if predictions else None,
            "lag_p50_s": _largest([entry.get("lag_p50_s") for entry in labels]),
            "lag_p99_s": _largest([entry.get("lag_p99_s") for entry in labels]),
            "waiting": _sum_nested([entry.get("waiting") for entry in labels]) or {},
        },
        "latency": {
            "p50_s": _largest([s.get("latency", {}).get("p50_s") for s in answered]),
            "p99_s": _largest([s.get("latency", {}).get("p99_s") for s in answered]),
        },
        "last_id": newest.get("last_id") if newest else union.get("last_id"),
        "last_row_at": newest.get("last_row_at") if newest else None,
        "rows_per_s": _sum_nested([s.get("rows_per_s") for s in answered]) or 0,
        "excluded_rows": union.get("excluded_rows", 0),
        "alert": raised[0] if raised else (answered[0].get("alert") if answered else None),
        "baseline": answered[0].get("baseline") if answered else None,
        "csv": [s.get("csv") for s in answered],
        "shards": [
            {
                "url": shard.url,
                "answered": shard.summary is not None,
                "count": shard.summary.get("count") if shard.summary is not None else None,
                "rows_read": shard.rows_read,
                **({"problem": shard.problem} if shard.problem else {}),
            }
            for shard in shards
        ],
        "missing": [shard.url for shard in shards if shard.summary is None],
        "approximate": list(APPROXIMATE),
    }
