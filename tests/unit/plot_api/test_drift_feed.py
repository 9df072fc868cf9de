"""plot_api's reading of model_api's GET /drift (a stand-in model_api on a local port): a report as
model_api makes it is parsed whole; anything else is refused with the reason, never half-drawn."""

import asyncio
from typing import Any

import pytest

from services.common.contracts.drift import AssessedReport, UnavailableReport
from services.plot_api.drift_feed import DriftFeed
from tests.json_stub import JsonStub
from tests.unit.plot_api.test_drift_chart import NOW, drift_report, mixed_schema, unavailable_report


def latest(body: Any, status: int = 200) -> tuple[Any, str | None]:
    """What the feed makes of model_api answering ``body``: the report (or None) and its problem."""

    async def fetch(url: str) -> tuple[Any, str | None]:
        feed = DriftFeed(url)
        try:
            return await feed.latest(), feed.problem
        finally:
            await feed.close()

    with JsonStub("/drift", body, status) as model_api:
        return asyncio.run(fetch(model_api.url.removesuffix("/drift")))


def test_a_report_is_parsed_with_every_column_of_its_kind() -> None:
    report, problem = latest(drift_report(mixed_schema(3), shifted=["city_001"]))
    assert problem is None and isinstance(report, AssessedReport)
    assert [(name, column.kind) for name, column in report.features.items()] == [
        ("size_000", "numeric"),
        ("city_001", "categorical"),
        ("size_002", "numeric"),
    ]
    assert report.schema_.categorical == 1 and report.refused.since == NOW - 3600.0
    unavailable, problem = latest(unavailable_report(mixed_schema(2)).model_dump(mode="json"))
    assert problem is None and isinstance(unavailable, UnavailableReport) and "run register" in (unavailable.reason or "")


def without(report: dict[str, Any], *path: str) -> dict[str, Any]:
    """The report with the field at ``path`` left out."""
    if len(path) == 1:
        return {key: value for key, value in report.items() if key != path[0]}
    return {**report, path[0]: without(report[path[0]], *path[1:])}


CALM = drift_report(mixed_schema(3))


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (without(CALM, "window"), "window"),
        (without(CALM, "features", "city_001", "chi2_p"), "chi2_p"),
        ({**CALM, "prediction": {**CALM["prediction"], "p_value": 0.5}}, "p_value"),  # a field renamed on one side
        ({**CALM, "features": {"x": {**CALM["features"]["size_000"], "kind": "text"}}}, "kind"),
        ({**CALM, "status": "stale"}, "status"),
        ([1, 2], "the document: Input should be an object"),
    ],
)
def test_an_answer_that_is_not_a_drift_report_is_refused_naming_the_field(body: Any, named: str) -> None:
    report, problem = latest(body)
    assert report is None and problem is not None
    assert "no drift report plot_api can read" in problem and named in problem


def test_model_api_not_answering_is_the_problem() -> None:
    report, problem = latest({"detail": "no"}, status=503)
    assert report is None and problem is not None and "did not answer GET /drift" in problem and "503" in problem
