"""HEAD on every GET route (FastAPI answers it 405)."""

import httpx

from tests.unit.common.http.tiny_app import serve, tiny_app


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
