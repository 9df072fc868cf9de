"""plot_api: keeps error_distribution.png fresh and serves it, with a live dashboard."""

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib.resources import files
from typing import Annotated, Any, TypedDict

import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import Counter, Histogram

from services.common.files import ERROR_HISTOGRAM, METRIC_LOG, atomic_write
from services.common.http import service_app
from services.common.settings import Settings, get_settings
from services.plot_api.render import render_histogram
from services.plot_api.tail import MetricLogTail

log = logging.getLogger(__name__)

RENDERS = Counter("plot_renders", "Histograms rendered and written")
RENDER_SECONDS = Histogram("plot_render_seconds", "Time to read new rows, render and write the PNG")
DASHBOARD = files("services.plot_api").joinpath("dashboard.html").read_text(encoding="utf-8")


class PlotService:
    """Every PLOT_INTERVAL_S: take in new CSV rows; if there were any, redraw and rewrite the PNG."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tail = MetricLogTail(settings.LOGS_DIR / METRIC_LOG)
        self.png_path = settings.LOGS_DIR / ERROR_HISTOGRAM
        self.png: bytes | None = None
        self.etag: str | None = None
        self.rendered_at: float | None = None
        self.last_problem: str | None = None
        self._loop: asyncio.Task[None] | None = None

    def problem(self) -> str | None:
        if self._loop is None or self._loop.done():
            return "the refresh loop is not running"
        return self.last_problem

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="plot-refresh")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
                self.last_problem = None
            except OSError as exc:
                self.last_problem = f"cannot refresh {self.png_path}: {exc}"
                log.error("%s", self.last_problem)
            await asyncio.sleep(self.settings.PLOT_INTERVAL_S)

    async def refresh(self) -> bool:
        """Redraw if rows were appended (or nothing is drawn yet); return whether it redrew."""
        started = time.perf_counter()
        added = await asyncio.to_thread(self.tail.read_new)
        if self.tail.count == 0 or (added == 0 and self.png is not None):
            return False
        subtitle = f"newest row {self.tail.last_id} · drawn {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
        png = await asyncio.to_thread(render_histogram, self.tail.errors(), subtitle=subtitle)
        await asyncio.to_thread(atomic_write, self.png_path, png)
        self.png, self.etag, self.rendered_at = png, f'"{hashlib.sha256(png).hexdigest()[:20]}"', time.time()
        RENDERS.inc()
        RENDER_SECONDS.observe(time.perf_counter() - started)
        return True


class State(TypedDict):
    plot: PlotService
    http: httpx.AsyncClient


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    service = PlotService(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        service.start()
        async with httpx.AsyncClient(base_url=str(settings.METRIC_API_URL), timeout=2.0) as client:
            try:
                yield {"plot": service, "http": client}
            finally:
                await service.stop()

    app = service_app("plot_api", lifespan, service.problem)
    app.include_router(router)
    return app


async def get_service(request: Request) -> PlotService:
    return request.state.plot


async def get_metric_client(request: Request) -> httpx.AsyncClient:
    return request.state.http


Service = Annotated[PlotService, Depends(get_service)]
MetricClient = Annotated[httpx.AsyncClient, Depends(get_metric_client)]
router = APIRouter(tags=["plot"])


@router.get(
    "/plot/latest.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 304: {"description": "unchanged"}, 404: {"description": "no rows yet"}},
)
async def latest_png(service: Service, if_none_match: Annotated[str | None, Header()] = None) -> Response:
    if service.png is None or service.etag is None:
        return JSONResponse(
            {"detail": f"no histogram yet: {service.tail.path} has no rows (it is drawn within PLOT_INTERVAL_S of the first)"},
            status_code=404,
        )
    headers = {"ETag": service.etag, "Cache-Control": "no-cache"}
    if if_none_match is not None and service.etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(service.png, media_type="image/png", headers=headers)


@router.get("/api/summary", responses={502: {"description": "metric_api did not answer"}})
async def metric_summary(client: MetricClient) -> Any:
    """metric_api's /metrics/summary, relayed so the dashboard needs one origin only."""
    try:
        answer = await client.get("/metrics/summary")
        answer.raise_for_status()
    except httpx.HTTPError as exc:
        return JSONResponse({"detail": f"metric_api at {client.base_url} did not answer: {exc}"}, status_code=502)
    return answer.json()


@router.get("/", response_class=HTMLResponse)
async def dashboard(service: Service) -> HTMLResponse:
    interval_ms = int(service.settings.PLOT_INTERVAL_S * 1000)
    return HTMLResponse(DASHBOARD.replace("{{PLOT_INTERVAL_MS}}", str(interval_ms)))
