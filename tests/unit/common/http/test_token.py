"""API_TOKEN: the routes that change state ask for it, the others stay open."""

import httpx
import pytest

from tests.unit.common.http.tiny_app import AUTH, TOKEN, post_each, serve, tiny_app


def test_with_a_token_set_a_route_that_changes_state_asks_for_it() -> None:
    app, changes = tiny_app(API_TOKEN=TOKEN)
    body = {"json": {"count": 1}}
    none, wrong, other_scheme, lowercase_scheme, right = post_each(
        app,
        [
            body,
            {**body, "headers": {"Authorization": "Bearer not-the-token-0123456789"}},
            {**body, "headers": {"Authorization": f"Basic {TOKEN}"}},
            {**body, "headers": {"Authorization": f"bearer {TOKEN}"}},
            {**body, "headers": AUTH},
        ],
    )
    for refused in (none, wrong, other_scheme):
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer <API_TOKEN>" in refused.json()["detail"] and TOKEN not in refused.text
    assert (lowercase_scheme.status_code, right.status_code) == (200, 200) and len(changes) == 2


@pytest.mark.parametrize(
    "given", ["Bearer é-not-ascii", "Bearer ", "Bearer", "x" * 10_000], ids=["latin-1", "empty", "no token", "long"]
)
def test_a_malformed_authorization_header_is_a_401_not_a_500(given: str) -> None:
    app, changes = tiny_app(API_TOKEN=TOKEN)
    [answer] = post_each(app, [{"json": {"count": 1}, "headers": {"Authorization": given.encode("latin-1")}}])
    assert answer.status_code == 401 and changes == []


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
