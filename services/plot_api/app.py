"""plot_api: keeps three charts of the metric log fresh (PNGs in LOGS_DIR and over HTTP), with a live dashboard."""

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from importlib.resources import files
from typing import Annotated, Any, TypedDict

import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import Counter, Histogram

from services.common.files import ERROR_HISTOGRAM, ERROR_OVER_TIME, METRIC_LOG, PRED_VS_TRUE, atomic_write
from services.common.http import service_app
from services.common.settings import Settings, get_settings
from services.plot_api.render import ErrorOverTimeChart, HistogramChart, PredVsTrueChart, stamp
from services.plot_api.tail import MetricLogTail

# Each chart's name (in URLs and metrics) and its file under LOGS_DIR.
CHART_FILES = {"histogram": ERROR_HISTOGRAM, "error_over_time": ERROR_OVER_TIME, "pred_vs_true": PRED_VS_TRUE}

log = logging.getLogger(__name__)

RENDERS = Counter("plot_renders", "Refreshes that redrew charts and wrote their PNGs")
RENDER_SECONDS = Histogram("plot_render_seconds", "Time of one refresh that redrew: read new rows, render and write the charts behind")
CHART_SECONDS = Histogram("plot_chart_render_seconds", "Time to render one chart to PNG bytes", ["chart"])
DASHBOARD = files("services.plot_api").joinpath("dashboard.html").read_text(encoding="utf-8")


@dataclass(frozen=True)
class RenderedPng:
    """A chart's PNG as served: the bytes, their ETag and when they were drawn."""

    data: bytes
    etag: str
    last_modified: str  # an HTTP date

    @classmethod
    def of(cls, data: bytes, drawn_at: datetime) -> "RenderedPng":
        return cls(data, f'"{hashlib.sha256(data).hexdigest()[:20]}"', format_datetime(drawn_at, usegmt=True))


RECENT_CHARTS = ("error_over_time", "pred_vs_true")


def charts_to_draw(drawn: dict[str, tuple[int, int]], changes: int) -> list[str]:
    """Which charts a refresh draws, given what each was last drawn from (``drawn[chart]`` =
    (the tail's change count then, the refresh number then)) and the tail's change count now.

    The histogram whenever it is behind. Of the two recent-rows charts, the ones never drawn,
    else the one behind that was drawn longest ago: after the first, a refresh draws at most two, so
    it stays within its time budget, and both are current at most two refreshes after the rows
    stop coming.
    """
    chosen = [] if drawn.get("histogram", (None, 0))[0] == changes else ["histogram"]
    never = [c for c in RECENT_CHARTS if c not in drawn]
    behind = sorted((drawn[c][1], c) for c in RECENT_CHARTS if c in drawn and drawn[c][0] != changes)
    return chosen + (never or [c for _, c in behind[:1]])


class PlotService:
    """Every PLOT_INTERVAL_S: take in new CSV rows and redraw the charts behind them, writing
    their PNGs. The histogram covers every row; the other two the last RECENT_ROWS."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tail = MetricLogTail(settings.LOGS_DIR / METRIC_LOG)
        self.charts = {"histogram": HistogramChart(), "error_over_time": ErrorOverTimeChart(), "pred_vs_true": PredVsTrueChart()}
        self.images: dict[str, RenderedPng] = {}
        self.drawn: dict[str, tuple[int, int]] = {}
        self.refreshes = 0
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
                self.last_problem = f"cannot refresh the charts in {self.settings.LOGS_DIR}: {exc}"
                log.error("%s", self.last_problem)
            await asyncio.sleep(self.settings.PLOT_INTERVAL_S)

    async def refresh(self) -> list[str]:
        """Take in new rows and redraw the charts behind them; return the charts redrawn."""
        started = time.perf_counter()
        await asyncio.to_thread(self.tail.read_new)
        if self.tail.count == 0:
            return []
        changes = self.tail.changes
        names = charts_to_draw(self.drawn, changes)
        if not names:
            return []
        self.refreshes += 1
        images = await asyncio.to_thread(self._render_and_write, names)
        RENDERS.inc()
        RENDER_SECONDS.observe(time.perf_counter() - started)
        self.images = {**self.images, **images}  # published together, once written and counted
        self.drawn |= {name: (changes, self.refreshes) for name in names}
        return names

    def _render_and_write(self, names: list[str]) -> dict[str, RenderedPng]:
        """Draw the named charts and write each to LOGS_DIR (atomically). Runs in a thread."""
        tail = self.tail
        newest = tail.newest_row_time()
        if {"error_over_time", "pred_vs_true"} & set(names):  # only those two need the recent rows
            y_true, y_pred, errors = tail.recent_rows()
            recent = stamp(tail.count, f"the last {errors.size:,} rows", newest)
        renders = {
            "histogram": lambda: self.charts["histogram"].render(tail.distribution, stamp(tail.count, "all rows", newest)),
            "error_over_time": lambda: self.charts["error_over_time"].render(errors, tail.first_recent_row, recent),
            "pred_vs_true": lambda: self.charts["pred_vs_true"].render(y_true, y_pred, recent),
        }
        images = {}
        for name in names:
            with CHART_SECONDS.labels(name).time():
                data = renders[name]()
            images[name] = RenderedPng.of(data, datetime.now(UTC))
            atomic_write(self.settings.LOGS_DIR / CHART_FILES[name], data)
        return images


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


PNG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}},
    304: {"description": "unchanged since the ETag in If-None-Match"},
    404: {"description": "no rows yet"},
}


def png_response(service: PlotService, chart: str, if_none_match: str | None) -> Response:
    """A chart's current PNG from memory, with ETag/Last-Modified; 304 when the client has it."""
    image = service.images.get(chart)
    if image is None:
        return JSONResponse(
            {"detail": f"no {chart} chart yet: {service.tail.path} has no rows (it is drawn within PLOT_INTERVAL_S of the first)"},
            status_code=404,
        )
    headers = {"ETag": image.etag, "Last-Modified": image.last_modified, "Cache-Control": "no-cache"}
    if if_none_match is not None and (
        if_none_match.strip() == "*" or image.etag in (tag.strip() for tag in if_none_match.split(","))
    ):
        return Response(status_code=304, headers=headers)
    return Response(image.data, media_type="image/png", headers=headers)


IfNoneMatch = Annotated[str | None, Header()]


@router.get("/plot/latest.png", response_class=Response, responses=PNG_RESPONSES)
async def latest_png(service: Service, if_none_match: IfNoneMatch = None) -> Response:
    """The histogram of absolute errors over every row (also ``LOGS_DIR/error_distribution.png``)."""
    return png_response(service, "histogram", if_none_match)


@router.get("/plot/error_over_time.png", response_class=Response, responses=PNG_RESPONSES)
async def error_over_time_png(service: Service, if_none_match: IfNoneMatch = None) -> Response:
    """The absolute error of each of the last rows, with a rolling mean."""
    return png_response(service, "error_over_time", if_none_match)


@router.get("/plot/pred_vs_true.png", response_class=Response, responses=PNG_RESPONSES)
async def pred_vs_true_png(service: Service, if_none_match: IfNoneMatch = None) -> Response:
    """y_pred against y_true for the last rows, with the line y = x."""
    return png_response(service, "pred_vs_true", if_none_match)


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
