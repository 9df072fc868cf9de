"""service_app: the pages every service serves."""

import re

import httpx

from tests.unit.common.http.tiny_app import serve, tiny_app


def test_health_and_metrics_answer() -> None:
    async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        return await client.get("/health"), await client.get("/metrics")

    health, metrics = serve(tiny_app()[0], scenario)
    assert health.status_code == 200 and health.json() == {"status": "ok", "service": "tiny"}
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "python_gc_objects_collected_total" in metrics.text


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
