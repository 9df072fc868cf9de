"""A window assessed against the reference, as the JSON of ``GET /drift``. No I/O."""

from typing import Any

import numpy as np

from services.common.schema import PREDICTION, FeatureSchema
from services.model_api.drift.columns import categorical_column, compare_numeric, numeric_column
from services.model_api.drift.reference import NumericReference, Reference
from services.model_api.drift.rule import MIN_SAMPLES
from services.model_api.drift.window import SlidingWindow

REASSESS_S = 1.0  # a window that changes all the time is assessed again at most this often


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
