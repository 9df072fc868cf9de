"""Drift and data quality of what model_api is asked, against the reference kept with its model. No I/O.

- ``Reference``: what the model was trained on — per column (the ten features and the model's
  prediction on those rows) the values themselves, range, mean, std and quantile bins with counts.
- ``SlidingWindow``: the last N samples model_api predicted for, within the last T seconds, in a
  ring of N × 11 floats and N times (96 bytes a sample): O(N) memory, O(1) work a sample.
- The statistics, each over one column of the window against the same column of the reference:
  population stability index and Jensen–Shannon distance on the reference's fixed bins, the
  two-sample Kolmogorov–Smirnov test and the Wasserstein distance normed by the reference std.
- ``DriftRule``: which statistic decides ``drifted``, as Evidently's defaults set it: the KS test
  for a reference of up to 1,000 rows, the normed Wasserstein distance above that.
- ``DriftMonitor``: a window assessed against a reference, as the JSON of ``GET /drift``.
- ``DriftAlert``: the alert's state, raised while any column drifted.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import special

from services.common.messages import FEATURE_NAMES

PREDICTION = "prediction"
COLUMNS = (*FEATURE_NAMES, PREDICTION)  # a window row: the ten features, then the prediction
REFERENCE_FORMAT = 1
BINS = 10  # quantile bins of the reference (deciles); fewer where values repeat (sex has two)
ALPHA = 0.05  # the false-alarm rate of the whole set of columns, per assessment
KS_MAX_REFERENCE_ROWS = 1000  # Evidently: the KS test up to this many reference rows, Wasserstein above
WASSERSTEIN_THRESHOLD = 0.1  # normed Wasserstein distance from which a column drifted (Evidently)
PSI_BANDS = ((0.2, "significant"), (0.1, "moderate"), (0.0, "stable"))  # the usual PSI reading
PSI_EMPTY_SHARE = 1e-4  # an empty bin counts as this share in the PSI (as Evidently), so it stays finite
MIN_SAMPLES = 30  # below this the window is shown but not judged
REASSESS_S = 1.0  # a window that changes all the time is assessed again at most this often


class BadReference(ValueError):
    """A reference that cannot be used; the message says what is wrong with it."""


def quantile_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The inner edges of ``bins`` quantile bins of ``values``, repeated edges merged."""
    return np.unique(np.quantile(values, np.arange(1, bins) / bins))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many values fall in each bin: bin ``i`` holds ``edges[i-1] < x <= edges[i]``, the first
    everything up to ``edges[0]``, the last everything above ``edges[-1]`` (so no value is left out)."""
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)


@dataclass(frozen=True)
class ColumnReference:
    """One column of the reference: its values (sorted) and what is computed from them once."""

    values: np.ndarray
    edges: np.ndarray
    counts: np.ndarray
    minimum: float
    maximum: float
    mean: float
    std: float  # population std (ddof 0), as Evidently norms the Wasserstein distance with

    @classmethod
    def of(cls, values: np.ndarray, bins: int = BINS) -> "ColumnReference":
        values = np.sort(np.asarray(values, dtype=float))
        edges = quantile_edges(values, bins)
        return cls(
            values=values,
            edges=edges,
            counts=bin_counts(values, edges),
            minimum=float(values[0]),
            maximum=float(values[-1]),
            mean=float(values.mean()),
            std=float(values.std()),
        )

    def summary(self) -> dict[str, Any]:
        return {"min": self.minimum, "max": self.maximum, "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class Reference:
    """The model's training inputs and its predictions on them, column by column (``COLUMNS``)."""

    columns: Mapping[str, ColumnReference]
    rows: int
    source: str
    bins: int = BINS

    @classmethod
    def build(cls, features: np.ndarray, predictions: np.ndarray, source: str, bins: int = BINS) -> "Reference":
        """From a ``rows × 10`` feature matrix and the model's ``rows`` predictions on it."""
        features = np.asarray(features, dtype=float)
        predictions = np.asarray(predictions, dtype=float)
        if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES) or predictions.shape != (features.shape[0],):
            raise BadReference(
                f"a reference needs rows × {len(FEATURE_NAMES)} features and one prediction a row, "
                f"got {features.shape} and {predictions.shape}"
            )
        if features.shape[0] < 2:
            raise BadReference(f"a reference needs at least 2 rows, got {features.shape[0]}")
        matrix = np.column_stack([features, predictions])
        if not np.isfinite(matrix).all():
            raise BadReference("a reference must hold finite numbers only (a prediction or feature is NaN or infinite)")
        if not 2 <= bins <= 100:
            raise BadReference(f"a reference has 2 to 100 bins, not {bins}")
        columns = {name: ColumnReference.of(matrix[:, i], bins) for i, name in enumerate(COLUMNS)}
        return cls(columns, features.shape[0], source, bins)

    def to_json(self) -> dict[str, Any]:
        """The reference file's content: the values of every row (so KS and Wasserstein can be computed
        against them), and per column the summary and bins (for a reader; loading recomputes them)."""
        return {
            "format": REFERENCE_FORMAT,
            "source": self.source,
            "rows": self.rows,
            "bins": self.bins,
            "columns": {
                name: {**column.summary(), "edges": column.edges.tolist(), "counts": column.counts.tolist()}
                for name, column in self.columns.items()
            },
            "values": {name: column.values.tolist() for name, column in self.columns.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> "Reference":
        """A reference from its file's content; BadReference says what is wrong with it."""
        if not isinstance(data, dict) or data.get("format") != REFERENCE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise BadReference(f"not a drift reference of format {REFERENCE_FORMAT} (format: {found!r})")
        values = data.get("values")
        if not isinstance(values, dict) or list(values) != list(COLUMNS):
            names = list(values) if isinstance(values, dict) else values
            raise BadReference(f"the reference's columns must be {', '.join(COLUMNS)} in that order, not {names}")
        try:
            matrix = np.array([values[name] for name in COLUMNS], dtype=float).T
        except (TypeError, ValueError) as exc:
            raise BadReference(f"the reference's values are not one number per row and column: {exc}") from None
        bins = data.get("bins", BINS)
        if not isinstance(bins, int) or isinstance(bins, bool):
            raise BadReference(f"the reference's bins must be a whole number, not {bins!r}")
        return cls.build(matrix[:, :-1], matrix[:, -1], str(data.get("source", "unknown")), bins)

    @property
    def rule(self) -> "DriftRule":
        return DriftRule.for_reference(self.rows)


# -- the statistics (each checked against scipy on the same samples in tests/unit/model_api/test_drift.py)


def shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(counts.shape)


def population_stability_index(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI = Σ (q − p) · ln(q / p) over the bins, p the reference's shares and q the window's;
    an empty bin counts as a share of 1e-4 (Evidently's choice) so one empty bin does not make it infinite."""
    p, q = shares(reference_counts), shares(current_counts)
    p, q = np.where(p == 0, PSI_EMPTY_SHARE, p), np.where(q == 0, PSI_EMPTY_SHARE, q)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_band(psi: float) -> str:
    return next(band for floor, band in PSI_BANDS if psi >= floor) if math.isfinite(psi) else "significant"


def jensen_shannon_distance(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """The square root of the Jensen–Shannon divergence of the two bin shares, natural log (as
    scipy's ``jensenshannon``): 0 for the same shares, at most √ln 2 ≈ 0.83 for disjoint ones."""
    p, q = shares(reference_counts), shares(current_counts)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        some = a > 0
        return float(np.sum(a[some] * np.log(a[some] / m[some])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def ks_p_value(statistic: float, n: int, m: int) -> float:
    """The two-sided p-value of a two-sample KS statistic, by Stephens' approximation of its
    distribution (the Kolmogorov distribution at (√e + 0.12 + 0.11/√e)·D, e = nm/(n+m)).

    scipy's ``ks_2samp`` computes it exactly but takes about 7 ms a column; this takes
    microseconds and is within a few per cent of it from 30 window samples on (the tests check)."""
    root = math.sqrt(n * m / (n + m))
    return float(np.clip(special.kolmogorov((root + 0.12 + 0.11 / root) * statistic), 0.0, 1.0))


def ks_and_wasserstein(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float, float]:
    """(KS statistic, its p-value, Wasserstein-1 distance) of ``current`` against the sorted reference.

    Both come from the two empirical CDFs evaluated at every value of either sample: the KS
    statistic is their largest gap, the Wasserstein distance the area between them."""
    current = np.sort(current)
    n, m = reference_sorted.size, current.size
    both = np.sort(np.concatenate([reference_sorted, current]))
    gap = np.searchsorted(reference_sorted, both, side="right") / n - np.searchsorted(current, both, side="right") / m
    statistic = float(np.max(np.abs(gap)))
    wasserstein = float(np.sum(np.abs(gap[:-1]) * np.diff(both)))
    return statistic, ks_p_value(statistic, n, m), wasserstein


@dataclass(frozen=True)
class DriftRule:
    """Which statistic decides ``drifted``, and from where."""

    method: Literal["ks", "wasserstein"]
    threshold: float

    @classmethod
    def for_reference(cls, rows: int, tests: int = len(COLUMNS)) -> "DriftRule":
        """Evidently's default for a numerical column: the KS test at p ≤ 0.05 for a reference of at
        most 1,000 rows — here at 0.05 / 11 (Bonferroni over the ten features and the prediction,
        so that a window from the reference's own distribution raises an alarm on any of them at most
        5 % of the time) — and a normed Wasserstein distance ≥ 0.1 for a larger reference."""
        if rows <= KS_MAX_REFERENCE_ROWS:
            return cls("ks", ALPHA / tests)
        return cls("wasserstein", WASSERSTEIN_THRESHOLD)

    def drifted(self, ks_p: float, wasserstein_norm: float) -> bool:
        if self.method == "ks":
            return ks_p <= self.threshold
        return wasserstein_norm >= self.threshold

    def describe(self) -> str:
        if self.method == "ks":
            return (
                f"KS p ≤ {self.threshold:.4g} (0.05 / {round(ALPHA / self.threshold)}: Bonferroni over the "
                f"{len(FEATURE_NAMES)} features and the prediction), for a reference of ≤ {KS_MAX_REFERENCE_ROWS:,} rows"
            )
        return f"Wasserstein distance / reference std ≥ {self.threshold:g}, for a reference of > {KS_MAX_REFERENCE_ROWS:,} rows"

    def to_json(self) -> dict[str, Any]:
        return {"decides": self.method, "threshold": self.threshold, "alpha": ALPHA, "text": self.describe()}


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def assess_column(reference: ColumnReference, current: np.ndarray, rule: DriftRule, judged: bool) -> dict[str, Any]:
    """One column of the window against its reference: every statistic, the data quality, the bins,
    and ``drifted`` as ``rule`` decides it (never while not ``judged``: too few samples)."""
    counts = bin_counts(current, reference.edges)
    bins = {"edges": reference.edges.tolist(), "reference": reference.counts.tolist(), "current": counts.tolist()}
    summary: dict[str, float | None] = {"mean": None, "std": None, "min": None, "max": None}
    if current.size == 0:
        stats = dict.fromkeys(("ks_p", "ks_statistic", "psi", "psi_band", "js", "wasserstein_norm", "out_of_range_share"))
        return {"drifted": False, **stats, "window": summary, "reference": reference.summary(), "bins": bins}
    statistic, p_value, wasserstein = ks_and_wasserstein(reference.values, current)
    normed = wasserstein / reference.std if reference.std > 0 else (0.0 if wasserstein == 0 else math.inf)
    psi = population_stability_index(reference.counts, counts)
    outside = np.count_nonzero((current < reference.minimum) | (current > reference.maximum))
    summary = {
        "mean": float(current.mean()),
        "std": float(current.std()),
        "min": float(current.min()),
        "max": float(current.max()),
    }
    return {
        "drifted": judged and rule.drifted(p_value, normed),
        "ks_p": p_value,
        "ks_statistic": statistic,
        "psi": finite_or_none(psi),
        "psi_band": psi_band(psi),
        "js": jensen_shannon_distance(reference.counts, counts),
        "wasserstein_norm": finite_or_none(normed),
        "out_of_range_share": outside / current.size,
        "window": summary,
        "reference": reference.summary(),
        "bins": bins,
    }


class SlidingWindow:
    """The last ``size`` rows added, of those added in the last ``max_age_s`` seconds, in a ring
    buffer: ``size`` × ``width`` floats and ``size`` times, allocated once."""

    def __init__(self, size: int, max_age_s: float, width: int) -> None:
        if size < 1 or not max_age_s > 0:
            raise ValueError(f"a window needs a size ≥ 1 and an age > 0, not {size} and {max_age_s}")
        self.size = size
        self.max_age_s = max_age_s
        self._values = np.zeros((size, width))
        self._times = np.zeros(size)
        self._end = 0  # where the next row goes
        self.count = 0
        self.seen = 0  # rows ever added
        self.version = 0  # changes whenever the rows in the window change

    @property
    def nbytes(self) -> int:
        return self._values.nbytes + self._times.nbytes

    def add(self, rows: np.ndarray, now: float) -> None:
        """Add a batch of rows (``k × width``), all seen at ``now``; the oldest make room."""
        if len(rows) == 0:
            return
        self.seen += len(rows)
        rows = rows[-self.size :]
        k = len(rows)
        first = self._end
        stop = min(self.size, first + k)
        self._values[first:stop] = rows[: stop - first]
        self._values[: k - (stop - first)] = rows[stop - first :]
        self._times[first:stop] = now
        self._times[: k - (stop - first)] = now
        self._end = (first + k) % self.size
        self.count = min(self.size, self.count + k)
        self.version += 1

    def _oldest_first(self) -> np.ndarray:
        return (self._end - self.count + np.arange(self.count)) % self.size

    def expire(self, now: float) -> None:
        """Drop the rows older than ``max_age_s`` (the oldest first)."""
        if self.count == 0:
            return
        fresh = self._times[self._oldest_first()] >= now - self.max_age_s
        stale = int(np.argmax(fresh)) if fresh.any() else self.count
        if stale:
            self.count -= stale
            self.version += 1

    def rows(self) -> np.ndarray:
        """A copy of the rows in the window, oldest first."""
        rows: np.ndarray = self._values[self._oldest_first()]
        return rows

    def span(self) -> tuple[float | None, float | None]:
        """When the oldest and the newest row in the window were added."""
        if self.count == 0:
            return None, None
        order = self._oldest_first()
        return float(self._times[order[0]]), float(self._times[order[-1]])


class DriftMonitor:
    """A window over every sample model_api predicts for, assessed against the model's reference
    (None: drift is unavailable, for the reason given)."""

    def __init__(
        self, reference: Reference | None, size: int, max_age_s: float, unavailable: str | None = None, reassess_s: float = 0.0
    ) -> None:
        if reference is None and not unavailable:
            raise ValueError("without a reference, say why drift is unavailable")
        self.reference = reference
        self.unavailable = None if reference is not None else unavailable
        self.window = SlidingWindow(size, max_age_s, len(COLUMNS))
        self.reassess_s = reassess_s
        self._assessed: tuple[int, float, dict[str, Any]] | None = None  # window version, when, the report

    def observe(self, features: np.ndarray, predictions: np.ndarray, now: float) -> None:
        """Samples predicted for at ``now``: a ``k × 10`` matrix and ``k`` predictions."""
        self.window.add(np.column_stack([features, predictions]), now)

    def assess(self, now: float) -> dict[str, Any]:
        """The window against the reference, as ``GET /drift``'s JSON (without what the service adds):
        computed again only when the rows in the window changed, and then at most every ``reassess_s``
        (an assessment takes a few milliseconds; samples may come by the thousand a second)."""
        self.window.expire(now)
        if self._assessed is not None:
            version, when, report = self._assessed
            if version == self.window.version or now - when < self.reassess_s:
                return report
        report = self._assess()
        self._assessed = (self.window.version, now, report)
        return report

    def _window_json(self) -> dict[str, Any]:
        since, until = self.window.span()
        return {
            "count": self.window.count,
            "since": since,
            "until": until,
            "seen": self.window.seen,
            "size": self.window.size,
            "max_age_s": self.window.max_age_s,
            "min_count": MIN_SAMPLES,
            "memory_bytes": self.window.nbytes,
        }

    def _assess(self) -> dict[str, Any]:
        window = self._window_json()
        if self.reference is None:
            empty = {"drifted": False}
            return {
                "status": "unavailable",
                "reason": self.unavailable,
                "drifted": [],
                "window": window,
                "rule": None,
                "features": {name: dict(empty) for name in FEATURE_NAMES},
                "prediction": dict(empty),
                "reference": None,
            }
        rule = self.reference.rule
        rows = self.window.rows()
        judged = self.window.count >= MIN_SAMPLES
        columns = {name: assess_column(self.reference.columns[name], rows[:, i], rule, judged) for i, name in enumerate(COLUMNS)}
        drifted = [name for name, column in columns.items() if column["drifted"]]
        if not judged:
            status = "collecting"
            reason = f"{self.window.count} samples in the window; drift is judged from {MIN_SAMPLES} on"
        else:
            status, reason = ("drifted" if drifted else "calm"), None
        prediction = columns.pop(PREDICTION)
        return {
            "status": status,
            "reason": reason,
            "drifted": drifted,
            "window": window,
            "rule": rule.to_json(),
            "features": columns,
            "prediction": prediction,
            "reference": {"rows": self.reference.rows, "source": self.reference.source, "bins": self.reference.bins},
        }


@dataclass(frozen=True)
class DriftChange:
    """The drift alert raised (some columns drifted) or cleared (none any more)."""

    state: Literal["raised", "cleared"]
    drifted: tuple[str, ...]
    window_count: int
    rule: str
    at: float

    def payload(self, service: str) -> dict[str, Any]:
        return {
            "alert": self.state,
            "service": service,
            "drift": list(self.drifted),
            "window_count": self.window_count,
            "rule": self.rule,
            "at": self.at,
        }


class DriftAlert:
    """Raised while any column of a judged window drifted; a window not judged changes nothing."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.drifted: tuple[str, ...] = ()

    def check(self, report: Mapping[str, Any], now: float) -> DriftChange | None:
        if report["status"] not in ("calm", "drifted"):
            return None
        drifted: Sequence[str] = report["drifted"]
        raised = self.since is not None
        self.drifted = tuple(drifted)
        if bool(drifted) == raised:
            return None
        self.since = now if drifted else None
        return DriftChange(
            "raised" if drifted else "cleared", self.drifted, report["window"]["count"], report["rule"]["text"], now
        )
