"""A DirectRoute answers every body as FastAPI's own route does, asks for the token as it does, and
is documented as it is; only its handler differs."""

from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request

from services.common.http.direct import DirectRoute
from tests.unit.common.http.tiny_app import AUTH, TOKEN, Order, serve, tiny_app


def both_routes(**settings: Any) -> tuple[FastAPI, list[Order]]:
    """tiny_app, whose POST /orders is FastAPI's route, with POST /direct: the same endpoint as a DirectRoute."""
    app, changes = tiny_app(**settings)
    router = APIRouter()

    async def direct(body: Order, request: Request) -> Order:
        assert isinstance(request, Request)
        changes.append(body)
        return body

    router.add_api_route("/direct", direct, methods=["POST"], route_class_override=DirectRoute)
    app.include_router(router)
    return app, changes


BODIES: list[dict[str, Any]] = [
    {"json": {"count": 2}},
    {"json": {"count": "2"}},  # strict: a string is not an int
    {"json": {"count": 2, "typo": 1}},
    {"json": {}},
    {"json": [1, 2]},
    {"json": None},
    {"content": b""},
    {"content": b'{"count": 2', "headers": {"content-type": "application/json"}},  # cut short
    {"content": b'{"count": 2}', "headers": {"content-type": "text/plain"}},
    {"content": b'{"count": 2}'},  # no content type
    {"content": b'{"count": 2}', "headers": {"content-type": "application/vnd.api+json"}},
    {"content": b'{"count": 2}', "headers": {"content-type": "application/json; charset=utf-8"}},
    {"content": b'{"count": "\xff"}', "headers": {"content-type": "application/json"}},  # not UTF-8
    {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {"content-type": "application/json"}},  # nested too deeply
    {"content": b'{"count": ' + b"9" * 5000 + b"}", "headers": {"content-type": "application/json"}},
    {"content": b'{"count": NaN}', "headers": {"content-type": "application/json"}},
    {"content": b'{"count": 1, "price": Infinity}', "headers": {"content-type": "application/json"}},
    {"data": {"count": "2"}},  # a form
    {"content": b'{"count": 1, "count": 2}', "headers": {"content-type": "application/json"}},  # the last one counts
    {"content": b'\xef\xbb\xbf{"count": 2}', "headers": {"content-type": "application/json"}},  # a byte order mark
    {"content": b'{"count": 2, "price": 1e400}', "headers": {"content-type": "application/json"}},
    {"content": b'{"count": 2, "price": "\\ud800"}', "headers": {"content-type": "application/json"}},  # a lone surrogate
    {"content": b'{"count": 2} x', "headers": {"content-type": "application/json"}},
    {"content": b' {"count": 2}\n', "headers": {"content-type": "application/json"}},
    {"content": b'{"count": 2.0}', "headers": {"content-type": "application/json"}},
    {"content": b'{"count": true}', "headers": {"content-type": "application/json"}},
]


@pytest.mark.parametrize("request_", BODIES, ids=range(len(BODIES)))
def test_a_direct_route_answers_each_body_as_fastapis_route_does(request_: dict[str, Any]) -> None:
    app, changes = both_routes()

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.post(path, **request_) for path in ("/orders", "/direct")]

    fastapis, direct = serve(app, scenario)
    assert direct.status_code == fastapis.status_code
    if fastapis.status_code == 200:
        assert direct.json() == {"count": 2, "price": 1.0} and len(changes) == 2
    else:
        assert direct.json() == fastapis.json()
        assert changes == []


def test_a_direct_route_asks_for_the_token_as_any_route_that_changes_state() -> None:
    app, changes = both_routes(API_TOKEN=TOKEN)

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await client.post("/direct", json={"count": 2}),
            await client.post("/direct", json={"count": 2}, headers={"Authorization": "Bearer another"}),
            await client.post("/direct", json={"count": 3}, headers=AUTH),
        ]

    without, wrong, given = serve(app, scenario)
    assert (without.status_code, wrong.status_code, given.status_code) == (401, 401, 200)
    assert without.headers["www-authenticate"] == "Bearer"
    assert [order.count for order in changes] == [3]


def test_a_direct_route_is_documented_as_fastapis_route_is() -> None:
    app, _ = both_routes(API_TOKEN=TOKEN)
    paths = app.openapi()["paths"]
    assert paths["/direct"]["post"]["requestBody"] == paths["/orders"]["post"]["requestBody"]
    assert paths["/direct"]["post"]["security"] == paths["/orders"]["post"]["security"]
    assert set(paths["/direct"]["post"]["responses"]) >= {"200", "400", "401", "413", "415", "422"}


def test_an_endpoint_a_direct_route_cannot_call_is_refused_when_the_route_is_made() -> None:
    router = APIRouter()

    async def no_request(body: Order) -> Order:
        return body

    with pytest.raises(TypeError, match="takes"):
        router.add_api_route("/x", no_request, methods=["POST"], route_class_override=DirectRoute)
