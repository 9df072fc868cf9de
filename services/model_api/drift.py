"""Drift and data quality of what model_api is asked, against the reference kept with its model. No I/O.

Any schema (services/common/schema.py): named features, each numeric or categorical, then the
model's prediction, judged as one more numeric column.

- ``Reference``: the model's reference table (services/common/reference.py), computed once per
  column: a numeric column's sorted values (missing ones left out) with their prefix sums, range,
  mean, std, quantile bins and missing count; a categorical column's count per category of the
  schema, of values past them ("other": the schema keeps at most CATEGORIES_MAX) and of missing ones.
- ``SlidingWindow``: the last N samples model_api predicted for, within the last T seconds, in a
  ring of N × (features + 1) floats (the encoded features, then the prediction) and N times:
  O(N) memory, O(1) work a sample. A category is held as its position among the schema's
  categories (``UNSEEN``, -1, for any other), a missing value as NaN.
- The statistics, each over one column of the window against the same column of the reference:
  numeric: the two-sample Kolmogorov–Smirnov test and the Wasserstein-1 distance normed by the
  reference std, both from the window's sorted values looked up in the sorted reference
  (O(m log n) for a window of m and a reference of n; the KS supremum is reached at a window
  value, from the right or the left, and the Wasserstein distance is the area between the two
  quantile functions, a sum over the window's m steps of integrals the reference's prefix sums
  give); PSI and Jensen–Shannon on the reference's decile bins. Categorical: the chi-square test
  of homogeneity, PSI and Jensen–Shannon over the categories, the values outside them and the
  missing ones. Any column: Fisher's exact test of its missing share (and of a categorical one's
  share outside its categories).
- ``DriftRule``: a column drifted when a test rejects "drawn like the reference" at
  p ≤ 0.01 / (features + 1) — Bonferroni over the features and the prediction, so that a window
  drawn like the reference raises an alarm on some column at most about 1 % of the time, for any
  number of features. (1 %, not 5 %: the alert is a page, and windows turn over every few hundred
  samples; on continuous columns the tests are close to exact, and at 5 % one calm window in 17 to
  25 raised it. The diabetes columns repeat their values, which makes the KS test conservative
  there: no calm window in 1,000 flags a column.) The rate is per window: the service assesses the
  window as it slides, a few samples at a time, and an excursion anywhere along the way counts, so
  a calm stream raises the alert more often than one window's worth of samples in a hundred — on
  200 continuous columns about once in five to eight windows' worth (bench/drift.py, "calm stream").
  The tests:
  - numeric: the KS test, for any reference size;
  - categorical: the chi-square test on the 2 × k table of reference and window counts over the
    categories, "other/unseen" and "missing"; bins whose expected count is below 5 in either
    sample are pooled into one (and that one, if still below 5, into the smallest other bin),
    as the chi-square approximation of the statistic's distribution needs;
  - any column: its missing share moved; a categorical one: its share of values outside its
    categories moved (pooled, a flood of unseen values can hide among the rare categories). Each
    by Fisher's exact test of the 2 × 2 table (those rows or the others × reference or window):
    exact for the rare counts these often have, where the normal approximation of the
    two-proportion z-test overstates significance by orders of magnitude (two missing values in a
    window of 300 against one in a reference of 10,000: z-test p 5e-11, exact 0.0025). A share the reference never
    showed (no missing values, say) cannot move by chance in a calm window, so these tests add
    little to the false alarms the Bonferroni correction counts.
  ``decided_by`` names the test that fired first, in that order (``ks`` or ``chi2``, ``missing``,
  ``unseen``). A window of fewer than MIN_SAMPLES rows is shown but not judged; nor are the values
  of a numeric column with fewer than MIN_SAMPLES of them in the window (its missing share is).

  Why not Evidently's defaults for a reference of more than 1,000 rows (numeric: Wasserstein / std
  ≥ 0.1; categorical: Jensen–Shannon ≥ 0.1)? They are thresholds on a distance for a large current
  batch, with no allowance for the sampling noise of a window of a few hundred: on a window of
  300 drawn like the reference the normed Wasserstein distance is about 0.07 and above 0.1 in
  about one window in seven, per column (normal, log-normal and Poisson columns alike); the
  Jensen–Shannon distance of a 30-category column is about 0.11, above 0.1 in most windows. With
  ten columns nearly every calm window would raise an alarm. A test's p-value accounts for the
  window's size (tests/unit/model_api/test_drift.py and bench/drift.py measure both claims).
  The distances are still reported (``wasserstein_norm``, ``js``, ``psi``): how far, not whether.
- ``DriftMonitor``: a window assessed against a reference, as the JSON of ``GET /drift``.
- ``DriftAlert``: the alert's state, raised while any column drifted.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from scipy import special

# BadReference is the reference file's error, raised here too (and re-exported): one class to catch for an unusable reference.
from services.common.reference import BadReference as BadReference
from services.common.reference import ReferenceTable
from services.common.schema import PREDICTION as PREDICTION  # re-exported: GET /drift's name for the model's output
from services.common.schema import FeatureSchema, FeatureSpec

BINS = 10  # quantile bins of a numeric column (deciles); fewer where values repeat (sex has two)
ALPHA = 0.01  # the false-alarm rate of the whole set of columns, per window drawn like the reference
CHI2_MIN_EXPECTED = 5.0  # a chi-square bin expected below this (in either sample) is pooled
PSI_BANDS = ((0.2, "significant"), (0.1, "moderate"), (0.0, "stable"))  # the usual PSI reading
PSI_EMPTY_SHARE = 1e-4  # an empty bin counts as this share in the PSI (as Evidently), so it stays finite
MIN_SAMPLES = 30  # below this the window (or a numeric column's values in it) is shown but not judged
REASSESS_S = 1.0  # a window that changes all the time is assessed again at most this often
TOP = 5  # the most frequent labels a categorical column's window shows
UNSEEN_LABEL = "(unseen)"  # a category the reference never showed
OTHER_LABEL = "(other)"  # the same bin when the reference has values past the schema's categories too
MISSING_LABEL = "(missing)"


# -- the reference, column by column


def quantile_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The inner edges of ``bins`` quantile bins of ``values``, repeated edges merged."""
    return np.unique(np.quantile(values, np.arange(1, bins) / bins))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many values fall in each bin: bin ``i`` holds ``edges[i-1] < x <= edges[i]``, the first
    everything up to ``edges[0]``, the last everything above ``edges[-1]`` (so no value is left out)."""
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)


def present_values(column: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    """A numeric column of the reference (floats, NaN where missing): its values sorted, and how many
    are missing. ``what`` names it in a BadReference."""
    column = np.asarray(column, dtype=float)
    missing = np.isnan(column)
    if np.isinf(column).any():
        raise BadReference(f"{what} holds infinite values in the reference; a numeric value is a finite number or missing")
    values = np.sort(column[~missing])
    if values.size == 0:
        raise BadReference(f"{what} is missing in all {column.size} rows of the reference: nothing to compare a window with")
    return values, int(missing.sum())


@dataclass(frozen=True)
class NumericReference:
    """A numeric column of the reference: its bins and summary (its values are in ``Reference.numeric``)."""

    edges: np.ndarray
    counts: np.ndarray
    minimum: float
    maximum: float
    mean: float
    std: float  # population std (ddof 0), as Evidently norms the Wasserstein distance with
    count: int  # values, the missing ones left out
    missing: int

    @classmethod
    def of(cls, values: np.ndarray, missing: int, bins: int = BINS) -> "NumericReference":
        """From the column's values, sorted, and how many more rows it has with the value missing."""
        edges = quantile_edges(values, bins)
        return cls(
            edges=edges,
            counts=bin_counts(values, edges),
            minimum=float(values[0]),
            maximum=float(values[-1]),
            mean=float(values.mean()),
            std=float(values.std()),
            count=values.size,
            missing=missing,
        )

    @property
    def rows(self) -> int:
        return self.count + self.missing

    def summary(self) -> dict[str, Any]:
        return {"min": self.minimum, "max": self.maximum, "mean": self.mean, "std": self.std, "count": self.count}


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class CategoricalReference:
    """A categorical column of the reference: the count of each of the schema's categories (in its
    order), then of the values past them (the schema keeps at most CATEGORIES_MAX), then of the missing ones."""

    categories: tuple[str, ...]
    counts: np.ndarray  # len(categories) + 2
    rows: int

    @classmethod
    def of(cls, column: np.ndarray, spec: FeatureSpec) -> "CategoricalReference":
        """From a column of strings, None where missing."""
        index = {category: i for i, category in enumerate(spec.categories)}
        outside, missing = len(index), len(index) + 1
        codes = np.fromiter(
            (missing if _is_missing(v) else index.get(v if isinstance(v, str) else str(v), outside) for v in column),
            dtype=np.intp,
            count=len(column),
        )
        return cls(spec.categories, np.bincount(codes, minlength=missing + 1), len(column))

    @property
    def outside(self) -> int:
        return int(self.counts[-2])

    @property
    def missing(self) -> int:
        return int(self.counts[-1])

    @property
    def labels(self) -> list[str]:
        # A window's value past the categories cannot be told from one of the reference's values past
        # them (the window keeps positions only): one bin for both, named after what the reference had.
        return [*self.categories, OTHER_LABEL if self.outside else UNSEEN_LABEL, MISSING_LABEL]


ColumnReference = NumericReference | CategoricalReference


@dataclass(frozen=True)
class SortedColumns:
    """Samples (of a value at least each) sorted, one after the other in one array, with the prefix
    sums of each less its median: what KS and Wasserstein against them need. Centred so that the
    sums of values far from zero (prices, timestamps) keep their precision."""

    values: np.ndarray
    starts: np.ndarray  # where sample j begins in values
    sizes: np.ndarray
    centres: np.ndarray
    sums: np.ndarray  # sample j's sizes[j] + 1 prefix sums begin at starts[j] + j
    distinct: np.ndarray  # whether no value of sample j repeats

    @classmethod
    def of(cls, samples: Sequence[np.ndarray]) -> "SortedColumns":
        ordered = [np.sort(np.asarray(sample, dtype=float)) for sample in samples]
        sizes = np.array([sample.size for sample in ordered], dtype=np.intp)
        if not ordered or sizes.min() < 1:
            raise ValueError("every sample needs a value at least")
        centres = np.array([sample[sample.size // 2] for sample in ordered])
        sums = [np.concatenate([[0.0], np.cumsum(sample - centre)]) for sample, centre in zip(ordered, centres, strict=True)]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        distinct = np.array([bool(np.all(sample[1:] > sample[:-1])) for sample in ordered])
        return cls(np.concatenate(ordered), starts, sizes, centres, np.concatenate(sums), distinct)

    def sample(self, j: int) -> np.ndarray:
        return self.values[self.starts[j] : self.starts[j] + self.sizes[j]]


@dataclass(frozen=True)
class NumericColumns:
    """The reference's numeric columns (the numeric features', then the prediction's) side by side, so
    that a window's are compared with them in whole-array operations rather than a dozen small ones
    a column: with 200 features, a few milliseconds instead of tens."""

    columns: tuple[NumericReference, ...]
    sorted: SortedColumns  # their values
    edges: np.ndarray  # columns × (bins − 1); +inf past a column's own edges: a bin no value reaches
    counts: np.ndarray  # columns × bins; 0 past a column's own bins (adding nothing to PSI or JS)
    std: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray

    @classmethod
    def of(cls, columns: Sequence[tuple[np.ndarray, int]], bins: int) -> "NumericColumns":
        """From each column's values, sorted, and its count of missing ones."""
        summaries = tuple(NumericReference.of(values, missing, bins) for values, missing in columns)
        edges = np.full((len(columns), bins - 1), np.inf)
        counts = np.zeros((len(columns), bins), dtype=np.intp)
        for j, column in enumerate(summaries):
            edges[j, : column.edges.size] = column.edges
            counts[j, : column.counts.size] = column.counts
        return cls(
            summaries,
            SortedColumns.of([values for values, _missing in columns]),
            edges,
            counts,
            np.array([column.std for column in summaries]),
            np.array([column.minimum for column in summaries]),
            np.array([column.maximum for column in summaries]),
        )


@dataclass(frozen=True)
class Reference:
    """The model's reference rows, column by column: the schema's features, then the model's predictions."""

    schema: FeatureSchema
    features: tuple[ColumnReference, ...]
    prediction: NumericReference
    rows: int
    source: str
    bins: int
    numeric: NumericColumns  # the numeric features' columns, then the prediction's

    @classmethod
    def from_table(cls, table: ReferenceTable, bins: int = BINS) -> "Reference":
        """BadReference if a column cannot be compared with (a numeric one missing in every row, say)."""
        if table.rows < 2:
            raise BadReference(f"a reference needs at least 2 rows, got {table.rows}")
        if len(table.columns) != len(table.schema):
            raise BadReference(f"the reference has {len(table.columns)} columns for {table.schema.describe()}")
        if not 2 <= bins <= 100:
            raise BadReference(f"a reference has 2 to 100 bins, not {bins}")
        pairs = list(zip(table.schema.features, table.columns, strict=True))
        numeric = NumericColumns.of(
            [present_values(column, f"feature {spec.name!r}") for spec, column in pairs if spec.numeric]
            + [present_values(table.prediction, "the model's prediction")],
            bins,
        )
        summaries = iter(numeric.columns)  # the numeric features' in schema order, then the prediction's
        features = tuple(next(summaries) if spec.numeric else CategoricalReference.of(column, spec) for spec, column in pairs)
        return cls(table.schema, features, next(summaries), table.rows, table.source, bins, numeric)

    @property
    def rule(self) -> "DriftRule":
        return DriftRule.for_schema(self.schema)


# -- the statistics (each checked against scipy on the same samples in tests/unit/model_api/test_drift.py)


def shares(counts: np.ndarray) -> np.ndarray:
    """Counts as shares of their total, along the last axis (zeros for none)."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum(axis=-1, keepdims=True)
    share: np.ndarray = np.divide(counts, total, out=np.zeros(counts.shape), where=total > 0)
    return share


def population_stability_index(reference_counts: np.ndarray, current_counts: np.ndarray) -> np.ndarray:
    """PSI = Σ (q − p) · ln(q / p) over the bins (the last axis), p the reference's shares and q the
    window's; an empty bin counts as a share of 1e-4 (Evidently's choice) so one empty bin does not
    make it infinite (and a bin empty in both adds nothing)."""
    p, q = np.maximum(shares(reference_counts), PSI_EMPTY_SHARE), np.maximum(shares(current_counts), PSI_EMPTY_SHARE)
    psi: np.ndarray = np.sum((q - p) * np.log(q / p), axis=-1)
    return psi


def psi_band(psi: float) -> str:
    return next(band for floor, band in PSI_BANDS if psi >= floor) if math.isfinite(psi) else "significant"


def jensen_shannon_distance(reference_counts: np.ndarray, current_counts: np.ndarray) -> np.ndarray:
    """The square root of the Jensen–Shannon divergence of the two bin shares (the last axis),
    natural log (as scipy's ``jensenshannon``): 0 for the same shares, at most √ln 2 ≈ 0.83 for disjoint ones."""
    p, q = shares(reference_counts), shares(current_counts)
    m = (p + q) / 2
    divergence = (special.rel_entr(p, m).sum(axis=-1) + special.rel_entr(q, m).sum(axis=-1)) / 2
    distance: np.ndarray = np.sqrt(np.maximum(divergence, 0.0))
    return distance


def ks_p_value(statistic: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The two-sided p-value of a two-sample KS statistic, by Stephens' approximation of its
    distribution (the Kolmogorov distribution at (√e + 0.12 + 0.11/√e)·D, e = nm/(n+m)).

    scipy's ``ks_2samp`` computes it exactly but takes milliseconds a column; this takes
    microseconds and is within 6 % of it for p ≥ 0.001 from 30 window samples on (the tests check)."""
    root = np.sqrt(n * m / (n + m))
    p_value: np.ndarray = np.clip(special.kolmogorov((root + 0.12 + 0.11 / root) * statistic), 0.0, 1.0)
    return p_value


def ks_and_wasserstein_columns(
    reference: SortedColumns, which: np.ndarray, window: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column j of ``window`` (each sorted, its ``present[j]`` values first, then NaN), against the
    reference's sample ``which[j]``: the KS statistic, its p-value and the Wasserstein-1 distance
    (NaN where the column has no value). O(m log n) for a window of m and a reference of n: nothing
    is merged or sorted.

    KS: both empirical CDFs are steps; between two window values the window's is flat and the
    reference's rises, so the largest gap is at a window value w, either at w (both CDFs counting
    the values ≤ w) or just before it (both counting the values < w).

    Wasserstein: the area between the two quantile functions over u in [0, 1]. The window's is
    w_i on step i, (i/m, (i+1)/m]; there ∫|Q_ref − w_i| = ∫(Q_ref − w_i) + 2∫(w_i − Q_ref) over
    the part where Q_ref ≤ w_i, which ends at τ_i = F_ref(w_i) (clipped to the step). The first
    terms add up to mean(reference) − mean(window); the second are read off the reference's
    prefix sums, G(u) = ∫_0^u Q_ref being linear between multiples of 1/n. Positions on [0, 1]
    are whole multiples of 1/(mn), so that which reference value is where is exact."""
    rows, columns = window.shape
    nan = np.full(columns, np.nan)
    if rows == 0:
        return nan, nan, nan
    n = reference.sizes[which]
    m = np.maximum(present, 1)  # a column without values divides by 1, and is NaN in the end
    # n·F_ref(w) and n·F_ref(w−): a search a column (the samples differ), then whole-array operations.
    at_or_below = np.empty((rows, columns), dtype=np.intp)
    below = np.empty((rows, columns), dtype=np.intp)
    distinct = reference.distinct[which]
    for j, sample in enumerate(which.tolist()):
        values = reference.sample(sample)
        at_or_below[:, j] = np.searchsorted(values, window[:, j], side="right")
        if not distinct[j]:
            below[:, j] = np.searchsorted(values, window[:, j], side="left")
    if distinct.any():  # at most one reference value equals w: the one just before where w goes
        previous = reference.values[reference.starts[which] + np.maximum(at_or_below - 1, 0)]
        below = np.where(distinct, at_or_below - ((at_or_below > 0) & (previous == window)), below)
    # m·F_win(w) and m·F_win(w−): a value's rank, for a run of equal values the run's end and start.
    index = np.arange(rows)[:, None]
    run_starts = np.ones(window.shape, dtype=bool)
    run_starts[1:] = window[1:] != window[:-1]
    run_ends = np.ones(window.shape, dtype=bool)
    run_ends[:-1] = run_starts[1:]
    window_below = np.maximum.accumulate(np.where(run_starts, index, 0), axis=0)
    window_at_or_below = np.minimum.accumulate(np.where(run_ends, index, rows - 1)[::-1], axis=0)[::-1] + 1
    valid = index < present
    gap = np.maximum(np.abs(at_or_below / n - window_at_or_below / m), np.abs(below / n - window_below / m))
    statistic = np.where(valid, gap, 0.0).max(axis=0)

    first_sum = reference.starts[which] + which  # sample j's prefix sums begin at starts[j] + j
    centres = reference.centres[which]

    def integral(position: np.ndarray) -> np.ndarray:
        """∫_0^u (Q_ref − centre) at u = position / mn."""
        j = np.minimum(position // m, n - 1)  # on [j/n, (j+1)/n] Q_ref is the sample's j-th value
        value = reference.values[reference.starts[which] + j]
        result: np.ndarray = reference.sums[first_sum + j] / n + (position - j * m) / (m * n) * (value - centres)
        return result

    start = index * n  # i/m
    cross = np.clip(at_or_below * m, start, start + n)  # τ_i
    v = window - centres
    below_part = np.where(valid, v * (cross - start) / (m * n) - integral(cross) + integral(start), 0.0)
    window_mean = np.where(valid, v, 0.0).sum(axis=0) / m
    wasserstein = np.maximum(reference.sums[first_sum + n] / n - window_mean + 2 * below_part.sum(axis=0), 0.0)
    none = present == 0
    return np.where(none, nan, statistic), np.where(none, nan, ks_p_value(statistic, n, m)), np.where(none, nan, wasserstein)


def ks_and_wasserstein(reference: np.ndarray, current: np.ndarray) -> tuple[float, float, float]:
    """(KS statistic, its p-value, Wasserstein-1 distance) of one sample against another (no missing values)."""
    window = np.sort(np.asarray(current, dtype=float))[:, None]
    statistic, p_value, wasserstein = ks_and_wasserstein_columns(
        SortedColumns.of([reference]), np.zeros(1, dtype=np.intp), window, np.array([window.shape[0]])
    )
    return float(statistic[0]), float(p_value[0]), float(wasserstein[0])


def chi_square_homogeneity(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float, int]:
    """(statistic, p-value, degrees of freedom) of Pearson's chi-square test that the two samples'
    counts over the same bins come from one distribution (the 2 × k table, no continuity correction).

    Bins empty in both are dropped; bins expected below CHI2_MIN_EXPECTED in either sample are
    pooled into one, and that one, if still below, into the smallest other bin: the statistic
    follows the chi-square distribution only where every expected count is about 5 or more.
    Fewer than two bins left: nothing to test (0, 1, 0)."""
    r, c = np.asarray(reference_counts, dtype=float), np.asarray(current_counts, dtype=float)
    n, m = r.sum(), c.sum()
    if n == 0 or m == 0:
        return 0.0, 1.0, 0
    some = (r + c) > 0
    r, c = r[some], c[some]
    smaller = min(n, m) / (n + m)  # a bin's expected count in the smaller sample, per count of the bin in both
    small = (r + c) * smaller < CHI2_MIN_EXPECTED
    if small.any():
        r = np.append(r[~small], r[small].sum())
        c = np.append(c[~small], c[small].sum())
        if (r[-1] + c[-1]) * smaller < CHI2_MIN_EXPECTED and r.size > 1:
            into = int(np.argmin(r[:-1] + c[:-1]))
            r[into] += r[-1]
            c[into] += c[-1]
            r, c = r[:-1], c[:-1]
    if r.size < 2:
        return 0.0, 1.0, 0
    total = r + c
    expected_r, expected_c = total * (n / (n + m)), total * (m / (n + m))
    statistic = float(np.sum((r - expected_r) ** 2 / expected_r) + np.sum((c - expected_c) ** 2 / expected_c))
    dof = r.size - 1
    return statistic, float(special.chdtrc(dof, statistic)), dof


def share_p(reference_count: int, reference_rows: int, current_count: int, current_rows: int) -> float:
    """The two-sided p-value of Fisher's exact test that the window's share of some rows (missing
    values, values outside the categories) is the reference's.

    Given how many there are in both together (K of N), the window's count x is hypergeometric;
    the p-value sums the probabilities of every x no more likely than the one seen (as scipy's
    ``fisher_exact``). They come from the ratio of neighbours, P(x+1)/P(x) = (K−x)(m−x) / ((x+1)(N−K−m+x+1)),
    summed in logarithms: exact to rounding, for any counts, in microseconds."""
    n, m = reference_rows, current_rows
    total, both = n + m, reference_count + current_count
    if m == 0 or n == 0 or both in (0, total):
        return 1.0
    low, high = max(0, both - n), min(both, m)
    x = np.arange(low, high, dtype=float)
    steps = np.log((both - x) * (m - x)) - np.log((x + 1) * (total - both - m + x + 1))
    log_p = np.concatenate([[0.0], np.cumsum(steps)])  # log P(x) + a constant, x = low … high
    seen = log_p[current_count - low]
    weights = np.exp(log_p - log_p.max())
    extreme = log_p <= seen + 1e-7  # as likely as the one seen counts too, whatever the rounding
    return float(min(1.0, weights[extreme].sum() / weights.sum()))


@dataclass(frozen=True)
class DriftRule:
    """When a column drifted: a test's p-value at most ``alpha / tests`` (see the module's docstring)."""

    tests: int
    alpha: float = ALPHA

    @classmethod
    def for_schema(cls, schema: FeatureSchema) -> "DriftRule":
        return cls(len(schema) + 1)

    @property
    def threshold(self) -> float:
        return self.alpha / self.tests

    def significant(self, p_value: float | None) -> bool:
        return p_value is not None and p_value <= self.threshold

    def describe(self) -> str:
        return (
            f"a column drifted when p ≤ {self.threshold:.3g} ({self.alpha:g} / {self.tests}: Bonferroni over the "
            f"{self.tests - 1} features and the prediction) in a numeric column's KS test, a categorical column's "
            f"chi-square test (bins expected below {CHI2_MIN_EXPECTED:g} pooled), or Fisher's exact test of a column's "
            f"missing share or a categorical column's share of unseen values; judged from {MIN_SAMPLES} samples"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "decides": "ks",  # a numeric column's test (the prediction's too)
            "categorical": "chi2",
            "missing": "fisher",  # the missing share, and a categorical column's unseen share
            "threshold": self.threshold,
            "alpha": self.alpha,
            "tests": self.tests,
            "text": self.describe(),
        }


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


class SlidingWindow:
    """The last ``size`` rows added, of those added in the last ``max_age_s`` seconds, in a ring
    buffer: ``size`` × ``width`` floats and ``size`` times, allocated once."""

    def __init__(self, size: int, max_age_s: float, width: int) -> None:
        if size < 1 or not max_age_s > 0:
            raise ValueError(f"a window needs a size ≥ 1 and an age > 0, not {size} and {max_age_s}")
        self.size = size
        self.max_age_s = max_age_s
        self.width = width
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
        self,
        reference: Reference | None,
        schema: FeatureSchema,
        size: int,
        max_age_s: float,
        unavailable: str | None = None,
        reassess_s: float = 0.0,
    ) -> None:
        if reference is None and not unavailable:
            raise ValueError("without a reference, say why drift is unavailable")
        if reference is not None and reference.schema != schema:
            raise ValueError(f"the reference's schema ({reference.schema.describe()}) is not the model's ({schema.describe()})")
        self.reference = reference
        self.schema = schema
        self.unavailable = None if reference is not None else unavailable
        self.window = SlidingWindow(size, max_age_s, len(schema) + 1)
        self.reassess_s = reassess_s
        # The window's numeric columns (the numeric features', then the prediction's), as the reference's side by side.
        self._numeric = np.array([i for i, spec in enumerate(schema.features) if spec.numeric] + [len(schema)], dtype=np.intp)
        self._assessed: tuple[int, float, dict[str, Any]] | None = None  # window version, when, the report

    def observe(self, features: np.ndarray, predictions: np.ndarray, now: float) -> None:
        """Samples predicted for at ``now``: a ``k × features`` matrix encoded as ``FeatureSchema.encode``
        makes it, and ``k`` predictions (NaN where none)."""
        features = np.asarray(features, dtype=float)
        if features.ndim != 2 or features.shape[1] != len(self.schema) or len(predictions) != len(features):
            raise ValueError(
                f"observe takes k × {len(self.schema)} features and k predictions, not {features.shape} and {len(predictions)}"
            )
        self.window.add(np.column_stack([features, predictions]), now)

    def assess(self, now: float) -> dict[str, Any]:
        """The window against the reference, as ``GET /drift``'s JSON (without what the service adds):
        computed again only when the rows in the window changed, and then at most every ``reassess_s``
        (an assessment takes milliseconds; samples may come by the thousand a second)."""
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

    def _schema_json(self) -> dict[str, int]:
        categorical = len(self.schema.categorical)
        return {"features": len(self.schema), "numeric": len(self.schema) - categorical, "categorical": categorical}

    def _assess(self) -> dict[str, Any]:
        window = self._window_json()
        if self.reference is None:
            return {
                "status": "unavailable",
                "reason": self.unavailable,
                "drifted": [],
                "window": window,
                "rule": None,
                "schema": self._schema_json(),
                "features": {spec.name: {"drifted": False, "kind": spec.kind} for spec in self.schema.features},
                "prediction": {"drifted": False, "kind": "numeric"},
                "reference": None,
            }
        rule = self.reference.rule
        rows = self.window.rows()
        count = self.window.count
        judged = count >= MIN_SAMPLES
        numeric = compare_numeric(self.reference.numeric, rows[:, self._numeric])
        features: dict[str, dict[str, Any]] = {}
        j = 0  # the numeric columns in the comparison
        for i, (spec, column) in enumerate(zip(self.schema.features, self.reference.features, strict=True)):
            if isinstance(column, NumericReference):
                features[spec.name] = numeric_column(column, numeric, j, count, rule, judged)
                j += 1
            else:
                features[spec.name] = categorical_column(column, rows[:, i], rule, judged)
        prediction = numeric_column(self.reference.prediction, numeric, j, count, rule, judged)
        drifted = [name for name, column in features.items() if column["drifted"]] + (
            [PREDICTION] if prediction["drifted"] else []
        )
        if not judged:
            status = "collecting"
            reason = f"{count} samples in the window; drift is judged from {MIN_SAMPLES} on"
        else:
            status, reason = ("drifted" if drifted else "calm"), None
        return {
            "status": status,
            "reason": reason,
            "drifted": drifted,
            "window": window,
            "rule": rule.to_json(),
            "schema": self._schema_json(),
            "features": features,
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
