"""The reference as drift reads it: per column, what the statistics need, computed once from the
model's reference table (services/common/reference.py). No I/O."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.reference import BadReference, ReferenceTable
from services.common.schema import FeatureSchema, FeatureSpec
from services.model_api.drift.rule import DriftRule
from services.model_api.drift.statistics import BINS, SortedColumns, bin_counts, quantile_edges

UNSEEN_LABEL = "(unseen)"  # a category the reference never showed
OTHER_LABEL = "(other)"  # the same bin when the reference has values past the schema's categories too
MISSING_LABEL = "(missing)"


# -- the reference, column by column


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
