"""Which test decides that a column drifted, and at which threshold (the module docstring of
services/model_api/drift/__init__.py says why these). No I/O."""

from dataclasses import dataclass
from typing import Any

from services.common.schema import FeatureSchema
from services.model_api.drift.statistics import CHI2_MIN_EXPECTED

ALPHA = 0.01  # the false-alarm rate of the whole set of columns, per window drawn like the reference


MIN_SAMPLES = 30  # below this the window (or a numeric column's values in it) is shown but not judged


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
