"""A body over HTTP_BODY_MAX_BYTES: a 413 before it is read."""

from collections.abc import AsyncIterator

import httpx

from tests.unit.common.http.tiny_app import serve, tiny_app

LIMIT = 2048
JSON = {"content-type": "application/json"}


def test_a_body_over_the_limit_is_a_413_naming_it_whether_its_length_is_declared_or_not() -> None:
    app, changes = tiny_app(HTTP_BODY_MAX_BYTES=LIMIT)
    padded = b'{"count": 1, "price": 1.0' + b" " * 4000 + b"}"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: a chunked upload
        for start in range(0, len(padded), 500):
            yield padded[start : start + 500]

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await client.post("/orders", content=padded, headers=JSON),
            await client.post("/orders", content=chunks(), headers=JSON),
            await client.post("/orders", content=padded[:2000] + b"}", headers=JSON),
        ]

    declared, streamed, within = serve(app, scenario)
    for answer in (declared, streamed):
        assert answer.status_code == 413 and "2048 bytes (HTTP_BODY_MAX_BYTES)" in answer.json()["detail"]
    assert within.status_code == 200 and len(changes) == 1
