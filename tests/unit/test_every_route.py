"""Every route of every service, whatever it is sent: a 4xx that says what is wrong, never a 5xx.

The routes are read from each app's own OpenAPI document (and the few pages outside it), so a
route added later is covered without touching this file. Each gets a table of hostile bodies
and content types, with and without the API token; the services run in process, their broker
links stand-ins (tests/integration/test_hostile_http.py sends a smaller table to real processes).
"""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.common.schema import DIABETES
from services.common.settings import Settings
from services.features_api.app import create_app as features_app
from services.metric_api.app import create_app as metric_app
from services.model_api.app import create_app as model_app
from services.plot_api.app import create_app as plot_app
from tests.json_stub import JsonStub
from tests.unit.in_process import in_process
from tests.unit.plot_api.test_drift_chart import unavailable_report
from tests.unit.plot_api.test_merged_summary import shard_summary
from tests.unit.stand_in_link import StandInLink

TOKEN = "hostile-table-token-0123456789"
BODY_LIMIT = 64 * 1024
JSON = "application/json"

# (name, body, content type): what a confused client, a fuzzer or an attacker sends.
HOSTILE_BODIES: list[tuple[str, bytes | None, str | None]] = [
    ("no body", None, None),
    ("empty JSON", b"", JSON),
    ("JSON without a content type", b'{"count": 2, "features": [0.1]}', None),
    ("text/plain", b'{"count": 2}', "text/plain"),
    ("form (plain curl -d)", b"count=2&features=0.1", "application/x-www-form-urlencoded"),
    (
        "multipart",
        b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\n{"count": 2}\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
    ),
    ("invalid UTF-8", b'{"count": "\xff\xfe\xfd"}', JSON),
    ("latin-1 declared", '{"count": "é"}'.encode("latin-1"), "application/json; charset=latin-1"),
    ("not JSON", b"{count: 2", JSON),
    ("a list", b"[1, 2, 3]", JSON),
    ("a string", b'"count"', JSON),
    ("null", b"null", JSON),
    ("wrong types", b'{"count": "3", "features": "0.1", "instances": {}, "labels": 5, "samples": true, "shift": []}', JSON),
    ("booleans for numbers", b'{"count": true, "features": [true, false, true, true, true, true, true, true, true, true]}', JSON),
    ("NaN and Infinity", b'{"count": NaN, "features": [NaN, Infinity, -Infinity, 0, 0, 0, 0, 0, 0, 0], "y_true": NaN}', JSON),
    (
        "absurd numbers",
        b'{"count": 1e308, "features": [1e308, 1e308, 1e308, 1e308, 1e308, 1e308, 1e308, 1e308, 1e308, 1e308]}',
        JSON,
    ),
    ("a 5,000-digit integer", b'{"count": ' + b"9" * 5000 + b"}", JSON),
    ("deep nesting", b'{"count": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", JSON),
    ("nested just under the parser's limit", b'{"count": ' + b"[" * 900 + b"]" * 900 + b"}", JSON),
    ("near the size limit", b'{"features": [' + b"0.5, " * ((BODY_LIMIT - 100) // 5) + b"0.5]}", JSON),
    ("over the size limit", b'{"count": 1, "pad": "' + b"x" * (2 * BODY_LIMIT) + b'"}', JSON),
    ("unknown fields", b'{"count": 1, "features": [0,0,0,0,0,0,0,0,0,0], "extra": {"a": [1, 2]}}', JSON),
    ("a NUL byte", b'{"count": "\\u0000"}', JSON),
]
HOSTILE_QUERIES = ["", "?limit=%ff%fe", "?limit=1e999&limit=-1", "?limit=" + "9" * 500, "?" + "a=" + "b" * 4000]
# Path parameters: each route's placeholders are filled with each of these.
HOSTILE_PATH_VALUES = ["latest.png", "%00", "..%2F..%2Fetc%2Fpasswd", "x" * 300, "%ff"]
OUTSIDE_THE_SCHEMA = [("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json"), ("GET", "/docs/oauth2-redirect")]


@pytest.fixture(scope="module")
def metric_stub() -> Iterator[JsonStub]:
    """plot_api's metric_api, as it relays /metrics/summary (a summary of no rows yet) and /metrics/by-time."""
    by_time = {"bucket_s": 3600.0, "buckets_kept": 168, "buckets": [], "dropped": {"predictions": 0, "labelled": 0}}
    summary = shard_summary([], 150.0).model_dump(mode="json")
    with JsonStub("/metrics/summary", summary, more={"/metrics/by-time": by_time}) as stub:
        yield stub


@pytest.fixture(scope="module")
def model_stub() -> Iterator[JsonStub]:
    """plot_api's model_api, as it relays /drift (drift unavailable: no reference)."""
    with JsonStub("/drift", unavailable_report(DIABETES).model_dump(mode="json")) as stub:
        yield stub


def apps(
    logs: Path, model_path: Path, metric_url: str, token: str | None, model_url: str = "http://127.0.0.1:9"
) -> dict[str, FastAPI]:
    """The four apps; plot_api relays the stand-ins at ``metric_url`` and ``model_url``."""
    settings = Settings(
        MODEL_API_URL=model_url,
        QUEUE_PREFIX="t.",
        LOGS_DIR=logs,
        MODEL_PATH=model_path,
        FEATURES_INTERVAL_S=3600,
        PLOT_INTERVAL_S=3600,
        METRIC_API_URL=metric_url,
        API_TOKEN=token,
        HTTP_BODY_MAX_BYTES=BODY_LIMIT,
    )
    return {
        "features_api": features_app(settings, StandInLink()),
        "model_api": model_app(settings, StandInLink()),
        "metric_api": metric_app(settings, StandInLink()),
        "plot_api": plot_app(settings),
    }


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every route in an OpenAPI document, and the pages outside it."""
    found = [
        (method.upper(), path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]
    return found + [(method, path, {}) for method, path in OUTSIDE_THE_SCHEMA]


def concrete_paths(path: str) -> list[str]:
    if "{" not in path:
        return [path]
    return [path.split("{")[0] + value + path.split("}", 1)[1] for value in HOSTILE_PATH_VALUES]


async def ready(client: httpx.AsyncClient, within_s: float = 20) -> None:
    """Wait for /health to answer 200 (metric_api opens its files after start-up): a 503 before is no finding."""
    for _ in range(int(within_s / 0.05)):
        if (await client.get("/health")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not ready within {within_s}s: {(await client.get('/health')).text}")


def send_all(app: FastAPI, headers: dict[str, str]) -> tuple[list[str], int]:
    """Every route × every hostile body (and query, and path value): the answers that were 5xx, and how many were sent."""

    async def scenario(client: httpx.AsyncClient) -> tuple[list[str], int]:
        await ready(client)
        schema = (await client.get("/openapi.json")).json()
        failures, sent = [], 0
        for method, path, _ in operations(schema):
            for url in concrete_paths(path):
                requests = [(name, body, kind, "") for name, body, kind in HOSTILE_BODIES]
                requests += [(f"query {query[:30]!r}", None, None, query) for query in HOSTILE_QUERIES[1:]]
                for name, body, kind, query in requests:
                    request_headers = {**headers, **({"content-type": kind} if kind else {})}
                    for verb in (method, "HEAD") if method == "GET" else (method,):
                        answer = await client.request(verb, url + query, content=body, headers=request_headers)
                        sent += 1
                        if answer.status_code >= 500:
                            failures.append(
                                f"{verb} {url[:60]}{query[:20]} with {name}: {answer.status_code} {answer.text[:200]}"
                            )
        return failures, sent

    result: tuple[list[str], int] = in_process(app, scenario)
    return result


@pytest.mark.parametrize("service", ["features_api", "model_api", "metric_api", "plot_api"])
@pytest.mark.parametrize("authorized", [True, False], ids=["with the token", "without it"])
def test_no_route_answers_a_hostile_request_with_a_5xx(
    tmp_path: Path, model_path: Path, metric_stub: JsonStub, model_stub: JsonStub, service: str, authorized: bool
) -> None:
    urls = f"http://127.0.0.1:{metric_stub.port}", f"http://127.0.0.1:{model_stub.port}"
    app = apps(tmp_path / "logs", model_path, urls[0], TOKEN, urls[1])[service]
    failures, sent = send_all(app, {"Authorization": f"Bearer {TOKEN}"} if authorized else {})
    assert sent > 100
    assert not failures, f"{len(failures)} of {sent} requests answered 5xx:\n" + "\n".join(failures[:40])


def json_body_schemas(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path, body schema) of every route that takes a JSON object."""
    components = schema.get("components", {}).get("schemas", {})
    for method, path, operation in operations(schema):
        body = operation.get("requestBody", {}).get("content", {}).get(JSON, {}).get("schema")
        if body is None:
            continue
        if "$ref" in body:
            body = components[body["$ref"].rsplit("/", 1)[1]]
        if body.get("type") == "object":
            yield method, path, body


def test_numbers_in_every_request_body_are_json_numbers_not_strings_or_booleans(
    tmp_path: Path, model_path: Path, metric_stub: JsonStub
) -> None:
    """{"count": true} and {"count": "3"} are refused as /predict refuses such values — on every route."""
    checked = []
    for service, app in apps(tmp_path / "logs", model_path, f"http://127.0.0.1:{metric_stub.port}", None).items():

        async def scenario(client: httpx.AsyncClient, service: str = service) -> list[str]:
            await ready(client)
            schema = (await client.get("/openapi.json")).json()
            wrong = []
            for method, path, body in json_body_schemas(schema):
                for field, spec in body.get("properties", {}).items():
                    if spec.get("type") not in ("integer", "number"):
                        continue
                    for value in ("3", True):
                        answer = await client.request(method, path, json={field: value})
                        checked.append(f"{service} {method} {path} {field}={value!r}")
                        if answer.status_code != 422:
                            wrong.append(
                                f"{method} {path} {json.dumps({field: value})}: {answer.status_code} {answer.text[:120]}"
                            )
            return wrong

        wrong = in_process(app, scenario)
        assert not wrong, f"{service} takes strings or booleans for numbers:\n" + "\n".join(wrong)
    assert any("count=True" in check for check in checked), checked  # at least POST /features/publish was checked
