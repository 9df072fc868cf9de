"""service_app: what every service answers whatever it is sent — tiny apps built inline, served in process."""

import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from aiormq.exceptions import ChannelInvalidStateError
from fastapi import APIRouter, FastAPI

from services.common.http import CHANGES_NOTHING, EXCERPT_CHARS, BrokerOutageLines, StrictBody, excerpt, service_app
from services.common.settings import Settings
from tests.unit.in_process import in_process

TOKEN = "the-token-of-this-test-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Order(StrictBody):
    count: int
    price: float = 1.0


def tiny_app(**settings: Any) -> tuple[FastAPI, list[Any]]:
    """A service with a POST that changes something, one that only computes, and a GET."""
    changes: list[Any] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield

    app = service_app("tiny", lifespan, lambda: None, settings=Settings(**settings))
    router = APIRouter()

    @router.post("/orders")
    async def order(body: Order) -> dict[str, int]:
        changes.append(body)
        return {"count": body.count}

    @router.post("/quote", openapi_extra=CHANGES_NOTHING)
    async def quote(body: Order) -> dict[str, float]:
        return {"total": body.count * body.price}

    @router.get("/orders")
    async def orders() -> dict[str, int]:
        return {"orders": len(changes)}

    app.include_router(router)
    return app, changes


def serve(app: FastAPI, scenario: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    return in_process(app, scenario)


def post_each(app: FastAPI, requests: list[dict[str, Any]], path: str = "/orders") -> list[httpx.Response]:
    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.post(path, **request) for request in requests]

    return serve(app, scenario)


# --- a body that is not JSON, or not readable: a 4xx that says what to do ---------------------


@pytest.mark.parametrize(
    ("headers", "sent_as"),
    [
        ({}, "none"),  # what `curl -d` sends without -H is form, but some clients send none
        ({"content-type": "application/x-www-form-urlencoded"}, "application/x-www-form-urlencoded"),  # plain curl -d
        ({"content-type": "text/plain"}, "text/plain"),
    ],
)
def test_a_json_body_not_sent_as_json_is_a_415_that_says_which_header_to_send(headers: dict[str, str], sent_as: str) -> None:
    app, changes = tiny_app()
    [answer] = post_each(app, [{"content": b'{"count": 2}', "headers": headers}])
    assert answer.status_code == 415
    assert "Content-Type: application/json" in answer.json()["detail"] and sent_as in answer.json()["detail"]
    assert changes == []


def test_a_multipart_or_form_body_is_a_415_too() -> None:
    app, _ = tiny_app()
    [multipart, form] = post_each(app, [{"files": {"f": ("a.json", b'{"count": 2}')}}, {"data": {"count": "2"}}])
    assert (multipart.status_code, form.status_code) == (415, 415)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"count": "\xff\xfe"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_a_body_that_cannot_be_read_as_json_is_a_400_that_says_why(body: bytes, said: str) -> None:
    app, _ = tiny_app()
    [answer] = post_each(app, [{"content": body, "headers": {"content-type": "application/json"}}])
    assert answer.status_code == 400 and said in answer.json()["detail"]


def test_invalid_json_is_a_422_with_what_the_parser_said_and_where() -> None:
    app, _ = tiny_app()
    [answer] = post_each(app, [{"content": b'{"count": 2,}', "headers": {"content-type": "application/json"}}])
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["type"] == "json_invalid" and "Expecting property name" in error["msg"] and error["loc"] == ["body", 12]


# --- JSON of the wrong shape: a 422 that quotes only a short excerpt ---------------------------------


@pytest.mark.parametrize(
    "value",
    [True, "3", 3.5, None, [1, 2], {"n": 1}, "x" * 600_000, [[[[[[[[[[[[[[1]]]]]]]]]]]]]], list(range(50_000))],
    ids=["true", "string", "fraction", "null", "list", "object", "600 kB string", "deep", "50,000 numbers"],
)
def test_a_count_that_is_not_an_integer_is_refused_quoting_a_short_excerpt(value: Any) -> None:
    app, changes = tiny_app()
    [answer] = post_each(app, [{"json": {"count": value}}])
    assert answer.status_code == 422 and changes == []
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "count"]
    assert len(json.dumps(error["input"])) <= EXCERPT_CHARS + 10
    assert len(answer.content) < 2000


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_literals_are_a_422_not_a_500(literal: bytes) -> None:
    app, _ = tiny_app()
    [answer] = post_each(
        app, [{"content": b'{"count": 1, "price": ' + literal + b"}", "headers": {"content-type": "application/json"}}]
    )
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["input"] == literal.decode()


def test_an_unknown_field_is_refused_not_ignored() -> None:
    app, changes = tiny_app()
    [answer] = post_each(app, [{"json": {"count": 1, "cuont": 2}}])
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "cuont"] and changes == []


def test_excerpt_keeps_small_values_and_cuts_the_rest_to_a_short_text() -> None:
    assert [excerpt(v) for v in (None, True, 3, 2.5, "abc", [1, "a"], {"k": [1]})] == [
        None,
        True,
        3,
        2.5,
        "abc",
        [1, "a"],
        {"k": [1]},
    ]
    assert [excerpt(v) for v in (math.nan, math.inf, b"\xff\xfeab")] == ["NaN", "Infinity", "\ufffd\ufffdab"]
    assert excerpt("x" * 1000) == "x" * EXCERPT_CHARS + "…"
    assert excerpt(list(range(1000))).startswith("[0, 1, 2") and len(excerpt(list(range(1000)))) == EXCERPT_CHARS + 1
    deep: Any = 1
    for _ in range(10_000):
        deep = [deep]
    assert excerpt(deep).endswith("…") and len(excerpt(deep)) <= EXCERPT_CHARS + 1
    assert excerpt(10**5000) == "an integer of about 5000 digits"
    json.dumps([excerpt(v) for v in (object(), {1: math.nan}, [math.inf] * 3)], allow_nan=False)


# --- the body's size -------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_naming_it_whether_its_length_is_declared_or_not() -> None:
    app, changes = tiny_app(HTTP_BODY_MAX_BYTES=2048)
    padded = b'{"count": 1, "price": 1.0' + b" " * 4000 + b"}"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: a chunked upload
        for start in range(0, len(padded), 500):
            yield padded[start : start + 500]

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        headers = {"content-type": "application/json"}
        return [
            await client.post("/orders", content=padded, headers=headers),
            await client.post("/orders", content=chunks(), headers=headers),
            await client.post("/orders", content=padded[:2000] + b"}", headers=headers),
        ]

    declared, streamed, within = serve(app, scenario)
    for answer in (declared, streamed):
        assert answer.status_code == 413 and "2048 bytes (HTTP_BODY_MAX_BYTES)" in answer.json()["detail"]
    assert within.status_code == 200 and len(changes) == 1


# --- HEAD ----------------------------------------------------------------------------------------------


def test_head_on_a_get_route_answers_its_headers_without_the_body() -> None:
    app, _ = tiny_app()

    async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        return await client.get("/health"), await client.head("/health"), await client.head("/nowhere")

    get, head, missing = serve(app, scenario)
    assert head.status_code == 200 and head.content == b""
    assert (
        head.headers["content-length"] == get.headers["content-length"]
        and head.headers["content-type"] == get.headers["content-type"]
    )
    assert missing.status_code == 404


# --- the token -------------------------------------------------------------------------------------------


def test_with_a_token_set_a_route_that_changes_state_asks_for_it() -> None:
    app, changes = tiny_app(API_TOKEN=TOKEN)
    body = {"json": {"count": 1}}
    none, wrong, lowercase_scheme, right = post_each(
        app,
        [
            body,
            {**body, "headers": {"Authorization": "Bearer not-the-token-0123456789"}},
            {**body, "headers": {"Authorization": f"bearer {TOKEN}"}},
            {**body, "headers": AUTH},
        ],
    )
    for refused in (none, wrong):
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer <API_TOKEN>" in refused.json()["detail"] and TOKEN not in refused.text
    assert (lowercase_scheme.status_code, right.status_code) == (200, 200) and len(changes) == 2


def test_with_a_token_set_reading_routes_and_those_that_change_nothing_stay_open() -> None:
    app, _ = tiny_app(API_TOKEN=TOKEN)

    async def scenario(client: httpx.AsyncClient) -> list[int]:
        answers = [
            await client.get("/orders"),
            await client.head("/orders"),
            await client.get("/health"),
            await client.get("/metrics"),
            await client.get("/docs"),
            await client.get("/openapi.json"),
            await client.post("/quote", json={"count": 2, "price": 2.5}),
        ]
        return [answer.status_code for answer in answers]

    assert serve(app, scenario) == [200] * 7


def test_without_a_token_every_route_is_open() -> None:
    app, changes = tiny_app()
    assert [answer.status_code for answer in post_each(app, [{"json": {"count": 1}}])] == [200] and len(changes) == 1


def test_the_openapi_document_shows_which_routes_ask_for_the_token_and_the_4xx_of_a_body() -> None:
    async def scenario(client: httpx.AsyncClient) -> dict[str, Any]:
        return (await client.get("/openapi.json")).json()

    protected = serve(tiny_app(API_TOKEN=TOKEN)[0], scenario)
    assert protected["components"]["securitySchemes"]["APIToken"]["scheme"] == "bearer"
    paths = protected["paths"]
    assert paths["/orders"]["post"]["security"] == [{"APIToken": []}] and "401" in paths["/orders"]["post"]["responses"]
    assert "security" not in paths["/quote"]["post"] and "security" not in paths["/orders"]["get"]
    assert {"400", "413", "415", "422"} <= set(paths["/orders"]["post"]["responses"])
    open_ = serve(tiny_app()[0], scenario)
    assert "security" not in open_["paths"]["/orders"]["post"] and "securitySchemes" not in open_.get("components", {})


# --- /docs offline -----------------------------------------------------------------------------------


def test_the_api_pages_load_every_asset_from_the_service_itself() -> None:
    """Swagger UI and ReDoc from a CDN are blank pages offline: every script, style and icon is served here."""
    app, _ = tiny_app()

    async def scenario(client: httpx.AsyncClient) -> dict[str, list[tuple[str, int, int]]]:
        pages = {}
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", html)
            pages[page] = [(url, (fetched := await client.get(url)).status_code, len(fetched.content)) for url in urls]
        return pages

    pages = serve(app, scenario)
    for page, assets in pages.items():
        urls = [url for url, _, _ in assets]
        assert any(url.endswith(".js") for url in urls), (page, urls)
        assert all(url.startswith("/") for url in urls), f"{page} loads from elsewhere: {urls}"
        assert all(status == 200 and size > 0 for _, status, size in assets), (page, assets)


# --- a broker outage in the logs ---------------------------------------------------------------------------


def test_a_broker_outage_traceback_becomes_one_warning_line_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    lines = BrokerOutageLines()
    caplog.handler.addFilter(lines)
    logger = logging.getLogger("asyncio")
    try:
        for _ in range(5):
            logger.error("Task exception was never retrieved", exc_info=ChannelInvalidStateError("<Channel: 3> closed"))
        logger.error("something else", exc_info=ValueError("not the broker"))
    finally:
        caplog.handler.removeFilter(lines)
    outage, other = caplog.records
    assert (outage.levelname, outage.exc_info) == ("WARNING", None)
    assert (
        "ChannelInvalidStateError: <Channel: 3> closed" in outage.getMessage() and "the broker went away" in outage.getMessage()
    )
    assert other.exc_info is not None


def test_aio_pikas_error_per_closed_channel_becomes_one_warning_too(caplog: pytest.LogCaptureFixture) -> None:
    """During a broker restart aio-pika logs, for each channel, "Callback ... error: ChannelInvalidStateError"
    at ERROR, without a traceback but with the exception as an argument: that looked like a crash."""
    lines = BrokerOutageLines()
    caplog.handler.addFilter(lines)
    logger = logging.getLogger("aio_pika.tools")
    try:
        for channel in range(4):
            closed = ChannelInvalidStateError("No active transport in channel")
            logger.error("Callback %r error: %s: %s", f"<RobustChannel {channel}>._on_close", type(closed).__name__, closed)
        logger.error("Callback %r error: %s: %s", "x", "ValueError", ValueError("a bug, not an outage"))
    finally:
        caplog.handler.removeFilter(lines)
    assert [record.levelname for record in caplog.records] == ["WARNING", "ERROR"]
    assert "the broker went away" in caplog.records[0].getMessage()
