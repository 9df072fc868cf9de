"""One column of a window against the same column of the reference: every statistic, the data
quality, the bins and the decision, as GET /drift shows them. No I/O."""

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from services.model_api.drift.reference import CategoricalReference, NumericColumns, NumericReference
from services.model_api.drift.rule import MIN_SAMPLES, DriftRule
from services.model_api.drift.statistics import (
    chi_square_homogeneity,
    jensen_shannon_distance,
    ks_and_wasserstein_columns,
    population_stability_index,
    psi_band,
    share_p,
)

TOP = 5  # the most frequent labels a categorical column's window shows


# -- a window's columns against the reference's


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def share_or_none(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def decision(rule: DriftRule, judged: bool, tests: Sequence[tuple[str, float | None]]) -> dict[str, Any]:
    """``drifted`` and ``decided_by``: the first of the column's tests (name, p-value) that rejects."""
    decided_by = next((name for name, p_value in tests if rule.significant(p_value)), None) if judged else None
    return {"drifted": decided_by is not None, "decided_by": decided_by}


# Columns of a window compared in one go: at most this many values (rows × columns), so that the
# comparison's temporary arrays stay a few megabytes whatever the window's size and the schema's width.
CHUNK_VALUES = 1 << 19


@dataclass(frozen=True)
class NumericComparison:
    """A window's numeric columns against the reference's, each statistic an array over the columns."""

    present: np.ndarray  # values (not missing) in the window, per column
    ks_statistic: np.ndarray
    ks_p: np.ndarray
    wasserstein: np.ndarray
    counts: np.ndarray  # columns × bins, on the reference's bins
    psi: np.ndarray
    js: np.ndarray
    sums: np.ndarray
    squares: np.ndarray  # Σ (x − mean)²
    minimum: np.ndarray
    maximum: np.ndarray
    out_of_range: np.ndarray


def compare_numeric(reference: NumericColumns, window: np.ndarray) -> NumericComparison:
    """``window``'s columns (rows × the reference's numeric columns, NaN where missing) against the
    reference's, a chunk of columns at a time."""
    rows, columns = window.shape
    per_chunk = max(1, CHUNK_VALUES // max(rows, 1))
    parts = [
        compare_numeric_chunk(reference, np.arange(first, min(columns, first + per_chunk)), window)
        for first in range(0, columns, per_chunk)
    ]
    return NumericComparison(*(np.concatenate([getattr(part, f.name) for part in parts]) for f in fields(NumericComparison)))


def compare_numeric_chunk(reference: NumericColumns, which: np.ndarray, window: np.ndarray) -> NumericComparison:
    rows = window.shape[0]
    ordered = np.sort(window[:, which], axis=0)  # NaN (missing) last
    present = rows - np.isnan(ordered).sum(axis=0)
    statistic, p_value, wasserstein = ks_and_wasserstein_columns(reference.sorted, which, ordered, present)
    # The window's values at most each edge (NaN is at most none; padding edges, +inf, count them all):
    # the bins' counts are the differences.
    at_or_below = (ordered[:, :, None] <= reference.edges[which][None, :, :]).sum(axis=0)
    counts = np.diff(at_or_below, axis=1, prepend=0, append=present[:, None])
    valid = np.arange(rows)[:, None] < present
    sums = np.where(valid, ordered, 0.0).sum(axis=0)
    mean = sums / np.maximum(present, 1)
    outside = valid & ((ordered < reference.minimum[which]) | (ordered > reference.maximum[which]))
    nan = np.full(which.size, np.nan)
    return NumericComparison(
        present=present,
        ks_statistic=statistic,
        ks_p=p_value,
        wasserstein=wasserstein,
        counts=counts,
        psi=population_stability_index(reference.counts[which], counts),
        js=jensen_shannon_distance(reference.counts[which], counts),
        sums=sums,
        squares=np.where(valid, (ordered - mean) ** 2, 0.0).sum(axis=0),
        minimum=ordered[0] if rows else nan,
        maximum=ordered[np.maximum(present - 1, 0), np.arange(which.size)] if rows else nan,
        out_of_range=outside.sum(axis=0),
    )


def numeric_column(
    reference: NumericReference, compared: NumericComparison, j: int, rows: int, rule: DriftRule, judged: bool
) -> dict[str, Any]:
    """Column ``j`` of the comparison as ``GET /drift`` shows it; ``drifted`` as ``rule`` decides it,
    never while not ``judged`` (too few samples in the window), nor by its values when fewer than
    MIN_SAMPLES of them are there."""
    present = int(compared.present[j])
    missing = rows - present
    missing_p = share_p(reference.missing, reference.rows, missing, rows)
    counts = compared.counts[j, : reference.counts.size]
    out: dict[str, Any] = {
        "kind": "numeric",
        "missing_share": share_or_none(missing, rows),
        "reference_missing_share": reference.missing / reference.rows,
        "missing_p": missing_p,
        "window": {"mean": None, "std": None, "min": None, "max": None, "count": 0},
        "reference": reference.summary(),
        "bins": {"edges": reference.edges.tolist(), "reference": reference.counts.tolist(), "current": counts.tolist()},
    }
    if present == 0:
        stats = dict.fromkeys(("ks_p", "ks_statistic", "psi", "psi_band", "js", "wasserstein_norm", "out_of_range_share"))
        return {**decision(rule, judged, [("missing", missing_p)]), **stats, **out}
    p_value, wasserstein = float(compared.ks_p[j]), float(compared.wasserstein[j])
    normed = wasserstein / reference.std if reference.std > 0 else (0.0 if wasserstein == 0 else math.inf)
    psi = float(compared.psi[j])
    out["window"] = {
        "mean": float(compared.sums[j]) / present,
        "std": math.sqrt(float(compared.squares[j]) / present),
        "min": float(compared.minimum[j]),
        "max": float(compared.maximum[j]),
        "count": present,
    }
    return {
        **decision(rule, judged, [("ks", p_value if present >= MIN_SAMPLES else None), ("missing", missing_p)]),
        "ks_p": p_value,
        "ks_statistic": float(compared.ks_statistic[j]),
        "psi": finite_or_none(psi),
        "psi_band": psi_band(psi),
        "js": float(compared.js[j]),
        "wasserstein_norm": finite_or_none(normed),
        "out_of_range_share": int(compared.out_of_range[j]) / present,
        **out,
    }


def category_counts(codes: np.ndarray, categories: int) -> np.ndarray:
    """A categorical column of the window (positions, UNSEEN, NaN) as counts: per category, then
    outside them, then missing (the reference's bins)."""
    missing = np.isnan(codes)
    known = codes[~missing].astype(np.intp)
    known[(known < 0) | (known >= categories)] = -1  # UNSEEN, and anything else no category has
    counts = np.bincount(known + 1, minlength=categories + 1)
    return np.concatenate([counts[1:], counts[:1], [int(missing.sum())]])


def categorical_column(reference: CategoricalReference, codes: np.ndarray, rule: DriftRule, judged: bool) -> dict[str, Any]:
    """One categorical column of the window (its codes, as ``FeatureSchema.encode`` makes them) as ``GET /drift`` shows it."""
    counts = category_counts(codes, len(reference.categories))
    rows = int(counts.sum())
    labels = reference.labels
    missing_p = share_p(reference.missing, reference.rows, int(counts[-1]), rows)
    unseen_p = share_p(reference.outside, reference.rows, int(counts[-2]), rows)
    out: dict[str, Any] = {
        "kind": "categorical",
        "unseen_share": share_or_none(int(counts[-2]), rows),
        "missing_share": share_or_none(int(counts[-1]), rows),
        "reference_missing_share": reference.missing / reference.rows,
        "missing_p": missing_p,
        "unseen_p": unseen_p,
        "bins": {"labels": labels, "reference": reference.counts.tolist(), "current": counts.tolist()},
    }
    if rows == 0:
        stats = dict.fromkeys(("chi2_p", "chi2_statistic", "psi", "psi_band", "js"))
        return {**decision(rule, judged, []), **stats, **out, "window": {"count": 0, "top": []}}
    statistic, p_value, _dof = chi_square_homogeneity(reference.counts, counts)
    psi = float(population_stability_index(reference.counts, counts))
    top = [i for i in np.argsort(-counts, kind="stable")[:TOP].tolist() if counts[i]]
    return {
        **decision(rule, judged, [("chi2", p_value), ("missing", missing_p), ("unseen", unseen_p)]),
        "chi2_p": p_value,
        "chi2_statistic": statistic,
        "psi": finite_or_none(psi),
        "psi_band": psi_band(psi),
        "js": float(jensen_shannon_distance(reference.counts, counts)),
        **out,
        "window": {"count": rows, "top": [{"label": labels[i], "share": int(counts[i]) / rows} for i in top]},
    }
