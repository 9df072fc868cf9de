"""The JSON between the services, as the services serve it (in process, broker links stand-ins):
each route's answer is its contract's model whole — parsed by the model and dumped again it is the
same document, so no field the service makes is dropped, renamed or added on the way — and the
route's OpenAPI names the model. plot_api's reading of them: tests/unit/plot_api."""

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
from httpx import AsyncClient, Response

from harness.datasets import HOUSE_FEATURES, UserModel, feature_bodies, house_prices
from services.common.contracts.drift import DRIFT_REPORT, AssessedReport, UnavailableReport
from services.common.contracts.rows_feed import REPLACED_STATUS, ROWS_ROUTE, RowsChunk
from services.common.contracts.summary import SUMMARY_ROUTE, Summary
from services.common.files import METRIC_LOG
from services.common.settings import Settings
from services.metric_api.app import create_app as metric_app
from services.model_api.app import create_app as model_app
from services.model_api.drift_watch import DriftWatch
from services.model_api.modelstore import load_model
from tests.unit.in_process import in_process
from tests.unit.metric_api.test_app import healthy
from tests.unit.metric_log import append, metric_rows
from tests.unit.stand_in_link import StandInLink


def response_schema(openapi: dict[str, Any], path: str) -> str:
    """The JSON schema a route's 200 answer is documented with, as text."""
    return json.dumps(openapi["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"])


def key_paths(document: Any, prefix: str = "") -> set[str]:
    """Every key of a JSON document, as a path (the items of a list share their path)."""
    if isinstance(document, dict):
        return {f"{prefix}.{key}" for key in document} | {
            p for key, v in document.items() for p in key_paths(v, f"{prefix}.{key}")
        }
    if isinstance(document, list):
        return {p for item in document for p in key_paths(item, f"{prefix}[]")}
    return set()


def test_metric_api_serves_its_summary_and_its_rows_as_their_contracts_say(tmp_path: Path) -> None:
    rows = metric_rows(0, 30, seed=4)
    append(tmp_path / METRIC_LOG, rows)

    async def scenario(client: AsyncClient) -> list[Response]:
        await healthy(client)
        paths = (SUMMARY_ROUTE, ROWS_ROUTE, f"{ROWS_ROUTE}?offset=10000000", "/openapi.json")
        return [await client.get(path) for path in paths]

    settings = Settings(LOGS_DIR=tmp_path, QUEUE_PREFIX="t.", BASELINE_MEAN=150.0)
    summary, feed, past_the_end, openapi = in_process(metric_app(settings, StandInLink()), scenario)
    parsed = Summary.model_validate_json(summary.content)
    assert parsed.model_dump(mode="json") == summary.json() and parsed.count == 30
    chunk = RowsChunk.of_answer(feed.headers, feed.content)
    assert chunk.data == (tmp_path / METRIC_LOG).read_bytes() and chunk.next_offset == len(chunk.data)
    assert past_the_end.status_code == REPLACED_STATUS
    assert '"#/components/schemas/Summary"' in response_schema(openapi.json(), SUMMARY_ROUTE)


def test_model_api_serves_every_field_of_its_drift_watchs_report(house: UserModel) -> None:
    """A model with numeric and categorical features, fed missing values and a category the reference
    never showed: /drift's answer has every key DriftWatch.report makes for the same rows, and no other."""
    frame = house_prices(60, seed=8)
    frame.loc[:4, "city"] = "Bordeaux"
    rows = feature_bodies(frame, HOUSE_FEATURES)
    assert pd.isna(frame["garden_m2"]).any()
    settings = Settings(MODEL_PATH=house.model_path, QUEUE_PREFIX="t.")

    async def scenario(client: AsyncClient) -> list[Response]:
        served = await client.post("/predict", json={"instances": rows})
        drift = await client.get("/drift")
        for _ in range(50):  # the window is assessed again at most once a second (docs/monitoring.md)
            if drift.json()["window"]["count"] == len(rows):
                break
            await asyncio.sleep(0.1)
            drift = await client.get("/drift")
        return [served, drift, await client.get("/openapi.json")]

    served, drift, openapi = in_process(model_app(settings, StandInLink()), scenario)
    model = load_model(house.model_path)
    watch = DriftWatch(settings, model)
    watch.observe([[row[name] for name in HOUSE_FEATURES] for row in rows], served.json()["predictions"])
    made = json.loads(json.dumps(watch.report(time.time())))
    answer = drift.json()
    assert made["quality"]["unseen"] == {"city": 5} and made["quality"]["missing"]  # the rows hit every kind of field
    assert {column["kind"] for column in made["features"].values()} == {"numeric", "categorical"}
    assert key_paths(answer) == key_paths(made)
    assert answer["features"]["city"] == made["features"]["city"]  # the values too (no time in a column)
    assert isinstance(DRIFT_REPORT.validate_python(answer), AssessedReport)
    documented = response_schema(openapi.json(), "/drift")
    assert "AssessedReport" in documented and "UnavailableReport" in documented


def test_a_model_without_a_reference_serves_the_unavailable_report_whole(tmp_path: Path, model_path: Path) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(model_path.read_bytes())
    sidecar = json.loads(Path(f"{model_path}.json").read_text())
    Path(f"{model}.json").write_text(json.dumps(sidecar))  # the same model, its reference file not beside it
    settings = Settings(MODEL_PATH=model, QUEUE_PREFIX="t.", LOGS_DIR=tmp_path)

    async def scenario(client: AsyncClient) -> Response:
        return await client.get("/drift")

    answer = in_process(model_app(settings, StandInLink()), scenario).json()
    made = json.loads(json.dumps(DriftWatch(settings, load_model(model)).report(time.time())))
    assert answer["status"] == "unavailable" and key_paths(answer) == key_paths(made)
    assert isinstance(DRIFT_REPORT.validate_python(answer), UnavailableReport)
