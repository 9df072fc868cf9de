"""One summary over every shard of the join: the shards' ``/metrics/summary`` answers merged,
and the union of their rows for what only the rows can tell. No I/O.

- Exact over the union: ``count``, ``mae``, ``rmse`` and the whole ``windows.all`` window
  (r2 and the percentiles too), computed from every row plot_api read from the shards
  (``ShardRowsTail.union``); ``baseline_mae`` and ``skill`` from the shards' (weighted by count).
- Exact from the shards' figures: sums (join counters, labels, rows_per_s) and, per model
  version and for ``last_5m``, count, mae (weighted by count), rmse (from the sums of squares,
  n·rmse²), me, max_ae, baseline_mae and skill; mape weighted by count (exact unless some labels
  are 0, which mape leaves out). ``excluded_rows`` is the union's.
- Not mergeable from summaries, so null there: r2 and the percentiles per model version and
  for ``last_5m``. Approximate, said in ``approximate``: ``last_100``/``last_1000`` are the newest
  rows as plot_api received them (shards interleaved by look), the timing percentiles (latency,
  join lag, label lag) are the largest of the shards' (an upper bound), and a shard that does not
  answer counts its rows read as its predictions (its predictions still without label are not
  known): the labelled share is over what is known, never above 1.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.contracts.summary import (
    JOIN_COUNTS,
    WINDOW_FIELDS,
    AlertInfo,
    EstimateSummary,
    Labels,
    MergedSummary,
    ShardState,
    Summary,
    Timing,
    WindowStats,
)
from services.common.error_window import empty_window, finite_or_none
from services.common.segment_rank import mae_low

APPROXIMATE = (
    "windows.last_100 and windows.last_1000: the newest rows as plot_api received them from the shards",
    "windows.last_5m and by_model_version: r2 and the percentiles are null (they do not merge from summaries)",
    "latency, join.lag_*, labels.lag_*: the largest of the shards' percentiles (an upper bound)",
    "labels.predictions: a shard that does not answer counts the rows read of it (a lower bound)",
    "segments: each value over the shards that track it (another shard may count it in (other)); r2 and percentiles null",
    "estimate: last_* windows are each shard's newest, merged; a band combines the shards' as independent errors",
)

SKETCHED_ALL = (
    "windows.all: p50_ae, p90_ae, p95_ae from a quantile sketch of the union's rows (within 0.5 %; past ALL_EXACT_ROWS rows)"
)


@dataclass(frozen=True)
class ShardSummary:
    """One shard's answer: its summary, or why there is none; and the rows read of it."""

    url: str
    summary: Summary | None
    problem: str | None = None
    rows_read: int = 0


def merge_windows(windows: Sequence[WindowStats]) -> WindowStats:
    """The twelve numbers of the union of disjoint windows, from each window's numbers: what
    merges exactly (see the module's docstring), null for what does not (r2, percentiles)."""
    counted = [w for w in windows if w.count]
    n = sum(w.count for w in counted)
    if n == 0:
        return WindowStats.model_validate(empty_window())

    def weighted(name: str, square: bool = False) -> float | None:
        values: list[float | None] = [getattr(w, name) for w in counted]
        known = [(w.count, v) for w, v in zip(counted, values, strict=True) if v is not None]
        if len(known) < len(values):
            return None
        if square:
            return math.sqrt(sum(k * v * v for k, v in known) / n)
        return sum(k * v for k, v in known) / n

    mape = [(w.count, w.mape) for w in counted if w.mape is not None]
    maxima = [w.max_ae for w in counted if w.max_ae is not None]
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
    finite = {name: value if name == "count" else finite_or_none(value) for name, value in merged.items()}
    return WindowStats.model_validate(finite)


def _largest(values: Sequence[float | None]) -> float | None:
    numbers = [v for v in values if v is not None]
    return max(numbers) if numbers else None


def _waiting(labels: Sequence[Labels]) -> dict[str, dict[str, int]]:
    """The halves waiting, by kind and age, summed over the shards."""
    total: dict[str, dict[str, int]] = {}
    for entry in labels:
        for kind, ages in entry.waiting.items():
            by_age = total.setdefault(kind, {})
            for age, count in ages.items():
                by_age[age] = by_age.get(age, 0) + count
    return total


def _labels(shards: Sequence[ShardSummary], labelled: int) -> dict[str, Any]:
    """The labels over the shards. Each shard counts at least the rows read of it as predictions:
    one that does not answer counts only those (``labelled`` counts them too), so the share stays
    a share."""
    labels = [shard.summary.labels for shard in shards if shard.summary is not None]
    predictions = sum(max(shard.summary.labels.predictions if shard.summary else 0, shard.rows_read) for shard in shards)
    return {
        "predictions": predictions,
        "labelled": labelled,
        "labelled_share": labelled / predictions if predictions else None,
        "lag_p50_s": _largest([entry.lag_p50_s for entry in labels]),
        "lag_p99_s": _largest([entry.lag_p99_s for entry in labels]),
        "waiting": _waiting(labels),
    }


def merge_summaries(shards: Sequence[ShardSummary], union: Mapping[str, Any]) -> MergedSummary:
    """The summary over every shard. ``union`` is ``RowWindows.summary()`` over the rows read
    from all the shards; a shard without a summary is named in ``missing`` (its rows read so far
    still count in ``windows.all``)."""
    answered = [shard.summary for shard in shards if shard.summary is not None]
    windows: dict[str, Any] = {name: window for name, window in union["windows"].items() if name != "last_5m"}
    all_rows = dict(windows["all"])
    shard_all = merge_windows([s.windows.all for s in answered])
    all_rows["baseline_mae"] = shard_all.baseline_mae
    all_rows["skill"] = finite_or_none(
        1.0 - all_rows["mae"] / shard_all.baseline_mae if all_rows["mae"] is not None and shard_all.baseline_mae else None
    )
    windows["all"] = all_rows
    windows["last_5m"] = merge_windows([s.windows.last_5m for s in answered])
    versions = dict.fromkeys(v for s in answered for v in s.by_model_version)
    joins = [s.join for s in answered]
    newest = max(answered, key=lambda s: s.last_row_at or -math.inf, default=None)
    raised = [s.alert for s in answered if s.alert is not None]  # an alert is there while raised
    return MergedSummary(
        count=all_rows["count"],
        mae=all_rows["mae"],
        rmse=all_rows["rmse"],
        windows=windows,
        by_model_version={
            version: merge_windows([s.by_model_version[version] for s in answered if version in s.by_model_version])
            for version in versions
        },
        join={
            **{name: sum(getattr(j, name) for j in joins) for name in JOIN_COUNTS},
            "lag_p50_s": _largest([j.lag_p50_s for j in joins]),
            "lag_p99_s": _largest([j.lag_p99_s for j in joins]),
        },
        labels=_labels(shards, all_rows["count"]),
        latency=Timing(p50_s=_largest([s.latency.p50_s for s in answered]), p99_s=_largest([s.latency.p99_s for s in answered])),
        last_id=newest.last_id if newest else union["last_id"],
        last_row_at=newest.last_row_at if newest else None,
        rows_per_s=sum(s.rows_per_s for s in answered),
        excluded_rows=union["excluded_rows"],
        alert=raised[0] if raised else None,
        alerts=_alerts(answered),
        segments=_segments(answered),
        estimate=merge_estimates([s.estimate for s in answered]),
        baseline=answered[0].baseline if answered else None,
        csv=[s.csv for s in answered],
        shards=[
            ShardState(
                url=shard.url,
                answered=shard.summary is not None,
                count=shard.summary.count if shard.summary is not None else None,
                rows_read=shard.rows_read,
                problem=shard.problem,
            )
            for shard in shards
        ],
        missing=[shard.url for shard in shards if shard.summary is None],
        approximate=[*APPROXIMATE, *([SKETCHED_ALL] if "windows.all" in union.get("approximate", []) else [])],
    )


def _segments(answered: list[Summary]) -> dict[str, Any]:
    """Each key's values merged over the shards: the windows as ``merge_windows`` merges them, the
    ranking bound again from the merged last_1000."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(key for summary in answered for key in summary.segments):
        books = [summary.segments[key] for summary in answered if key in summary.segments]
        values: dict[str, Any] = {}
        for value in dict.fromkeys(value for book in books for value in book.values):
            mine = [book.values[value].windows for book in books if value in book.values]
            windows = {name: merge_windows([getattr(w, name) for w in mine]) for name in ("all", "last_100", "last_1000")}
            checks = [check.model_dump() for book in books if value in book.values and (check := book.values[value].checked)]
            checked = _merge_counted(checks, "rows", ("realized_mae", "estimated_mae")) if checks else None
            values[value] = {"windows": windows, "mae_low": mae_low(windows["last_1000"].model_dump()), "checked": checked}
        out[key] = {
            "values": values,
            "tracked": max(book.tracked for book in books),
            "values_max": max(book.values_max for book in books),
            "promoted": sum(book.promoted for book in books),
        }
    return out


def _alerts(answered: list[Summary]) -> dict[str, AlertInfo]:
    """Each shard's alerts by name; where shards share a name, a raised one (the earliest raised) before
    a cleared one: a shard's alert is about its own rows, so any shard raising it raises it."""
    out: dict[str, AlertInfo] = {}
    for summary in answered:
        for name, alert in summary.alerts.items():
            held = out.get(name)
            if held is None or (alert.state == "raised", -(alert.since or 0.0)) > (held.state == "raised", -(held.since or 0.0)):
                out[name] = alert
    return out


def _weighted_mean(parts: Sequence[tuple[int, float | None]]) -> float | None:
    known = [(n, v) for n, v in parts if n and v is not None]
    total = sum(n for n, _ in known)
    return sum(n * v for n, v in known) / total if total else None


def _combined_band(parts: Sequence[tuple[int, float | None]]) -> float | None:
    """The band of a count-weighted mean of the shards' means, their errors taken as independent."""
    known = [(n, b) for n, b in parts if n and b is not None]
    total = sum(n for n, _ in known)
    return math.sqrt(sum((n / total) ** 2 * b * b for n, b in known)) if total else None


def _merge_counted(entries: Sequence[Mapping[str, Any]], count: str, means: Sequence[str]) -> dict[str, Any]:
    n = sum(entry[count] for entry in entries)
    merged: dict[str, Any] = {count: n}
    for name in means:
        merged[name] = _weighted_mean([(entry[count], entry[name]) for entry in entries])
    merged["band"] = _combined_band([(entry[count], entry["band"]) for entry in entries])
    return merged


def merge_estimates(estimates: Sequence[EstimateSummary | None]) -> EstimateSummary | None:
    """The shards' estimates (issue 24) as one: per model version, predictions and rows summed, means
    weighted by them, bands combined (see APPROXIMATE); available when any shard's is."""
    known = [e.model_dump() for e in estimates if e is not None]
    if not known:
        return None
    versions: dict[str, list[dict[str, Any]]] = {}
    for estimate in known:
        for version, state in estimate["by_model_version"].items():
            versions.setdefault(version, []).append(state)
    merged: dict[str, Any] = {}
    for version, states in versions.items():
        merged[version] = {
            "windows": {
                name: _merge_counted(
                    [s["windows"][name] for s in states if name in s["windows"]], "predictions", ["estimated_mae"]
                )
                for name in dict.fromkeys(n for s in states for n in s["windows"])
            },
            "checked": {
                name: _merge_counted(
                    [s["checked"][name] for s in states if name in s["checked"]], "rows", ["realized_mae", "estimated_mae"]
                )
                for name in dict.fromkeys(n for s in states for n in s["checked"])
            },
            "without_estimate": sum(s["without_estimate"] for s in states),
            "band_basis": next((s["band_basis"] for s in states if s["band_basis"]), None),
            "alert_raised": any(s["alert_raised"] for s in states),
        }
    available = any(e["available"] for e in known)
    because = None if available else next((e["unavailable_because"] for e in known if e["unavailable_because"]), None)
    return EstimateSummary.model_validate({"available": available, "unavailable_because": because, "by_model_version": merged})
