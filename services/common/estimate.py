"""The estimated error of a prediction (issue 24): what model_api's loss model says of it, how sure
that is, and where the loss model lives. No I/O but reading the sidecar's record.

The loss model (services/model_api/loss_model.py) predicts each prediction's absolute error
``|y - ŷ|`` from its features and ``ŷ``; model_api puts it in the y_pred message as
``estimated_error`` and metric_api averages it (services/metric_api/estimate.py).

**Its calibration** is measured when it is made, on reference rows it did not see (K-fold):
the residuals ``r = |y - ŷ| - estimate`` have a mean ``bias`` and a spread ``residual_sd``.
The mean realized error of ``n`` predictions then lies, on rows like the reference's, within

    band(n) = |bias| + Z · residual_sd / √n

of their mean estimate (Z = 1.96: 95 %). A window whose inputs moved where the reference has
few rows is less sure than that: the band says what the reference could measure, not more.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOSS_MODEL = "loss_model"  # the sidecar's key of its record
BAND_Z = 1.96


def loss_model_path(model_path: Path) -> Path:
    """The model's loss model (``<file>.loss.pkl``); its sha256 is in the sidecar."""
    return model_path.with_name(model_path.name + ".loss.pkl")


@dataclass(frozen=True)
class Calibration:
    """How the loss model did on rows it was not fitted on: the mean and spread of ``|y - ŷ| - estimate``."""

    rows: int
    bias: float
    residual_sd: float
    mean_loss: float

    def band(self, n: int, z: float = BAND_Z) -> float | None:
        """Half the width of the band of a mean estimate over ``n`` predictions (None for none)."""
        return band(self.bias, self.residual_sd, n, z)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "bias": self.bias, "residual_sd": self.residual_sd, "mean_loss": self.mean_loss}

    @classmethod
    def from_json(cls, record: Any) -> "Calibration | None":
        """The sidecar's record, or None when it is missing or not four finite numbers."""
        if not isinstance(record, dict):
            return None
        try:
            values = [float(record[key]) for key in ("bias", "residual_sd", "mean_loss")]
            rows = int(record["rows"])
        except (KeyError, TypeError, ValueError):
            return None
        if not all(math.isfinite(v) for v in values) or values[1] < 0 or rows < 2:
            return None
        return cls(rows, *values)


def band(bias: float, residual_sd: float, n: int, z: float = BAND_Z) -> float | None:
    if n <= 0:
        return None
    return abs(bias) + z * residual_sd / math.sqrt(n)


def calibration_of(metadata: dict[str, Any]) -> Calibration | None:
    """The calibration a sidecar records for its loss model, or None."""
    record = metadata.get(LOSS_MODEL)
    return Calibration.from_json(record.get("calibration")) if isinstance(record, dict) else None
