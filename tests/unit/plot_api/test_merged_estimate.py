"""The shards' estimated MAE (issue 24) merged in plot_api's /api/summary."""

import math

import pytest

from services.common.contracts.summary import EstimateSummary
from services.plot_api.merged_summary import merge_estimates


def shard(predictions: int, estimated: float, band: float, rows: int, realized: float, raised: bool) -> EstimateSummary:
    window = {"predictions": predictions, "estimated_mae": estimated, "band": band}
    checked = {"rows": rows, "realized_mae": realized, "estimated_mae": estimated, "band": band}
    return EstimateSummary.model_validate(
        {
            "available": True,
            "unavailable_because": None,
            "by_model_version": {
                "v1": {
                    "windows": {"all": window},
                    "checked": {"all": checked},
                    "without_estimate": 1,
                    "band_basis": "reference",
                    "alert_raised": raised,
                }
            },
        }
    )


def test_two_shards_merge_into_one_estimate_weighted_by_their_counts() -> None:
    merged = merge_estimates([shard(100, 10.0, 2.0, 50, 12.0, False), shard(300, 20.0, 1.0, 150, 20.0, True), None])
    assert merged is not None and merged.available
    state = merged.by_model_version["v1"]
    assert state.windows["all"].predictions == 400
    assert state.windows["all"].estimated_mae == pytest.approx((100 * 10 + 300 * 20) / 400)
    assert state.windows["all"].band == pytest.approx(math.sqrt((0.25 * 2) ** 2 + (0.75 * 1) ** 2))
    assert state.checked["all"].rows == 200
    assert state.checked["all"].realized_mae == pytest.approx((50 * 12 + 150 * 20) / 200)
    assert state.without_estimate == 2 and state.alert_raised


def test_no_shard_with_an_estimate_gives_none() -> None:
    assert merge_estimates([None, None]) is None
