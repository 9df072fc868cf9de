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
  window's size (tests/unit/model_api/drift/ and bench/drift.py measure both claims).
  The distances are still reported (``wasserstein_norm``, ``js``, ``psi``): how far, not whether.
- ``DriftMonitor``: a window assessed against a reference, as the JSON of ``GET /drift``.
- ``DriftAlert``: the alert's state, raised while any column drifted.
"""

from services.common.reference import BadReference
from services.common.schema import PREDICTION
from services.model_api.drift.alert import DriftAlert, DriftChange
from services.model_api.drift.monitor import REASSESS_S, DriftMonitor
from services.model_api.drift.reference import Reference
from services.model_api.drift.rule import ALPHA, MIN_SAMPLES, DriftRule
from services.model_api.drift.window import SlidingWindow

# What model_api and its readers use; the statistics and the columns' assessment are in their own modules.
__all__ = [
    "ALPHA",
    "MIN_SAMPLES",
    "PREDICTION",
    "REASSESS_S",
    "BadReference",
    "DriftAlert",
    "DriftChange",
    "DriftMonitor",
    "DriftRule",
    "Reference",
    "SlidingWindow",
]
