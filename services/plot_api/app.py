"""plot_api: keeps the registry's charts of the metric log and of model_api's drift fresh (PNGs in
LOGS_DIR and over HTTP), with a live dashboard."""

import asyncio
import hashlib
import html
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from importlib.resources import files
from typing import Annotated, Any, TypedDict, cast

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import Counter, Gauge, Histogram

from services.common.contracts.by_time import ByTime
from services.common.contracts.drift import DriftReport
from services.common.contracts.summary import MergedSummary, Summary
from services.common.files import METRIC_LOG, PLOT_SNAPSHOT, atomic_write
from services.common.http.app import service_app
from services.common.settings import Settings, get_settings
from services.common.snapshots import SNAPSHOT_PERIOD_S, Snapshot, SnapshotUnusable, read_snapshot, write_snapshot
from services.plot_api.by_time_feed import ByTimeUnreadable, fetch_by_time, sharded_by_time
from services.plot_api.charts import (
    CHARTS,
    PLOT_ROUTE,
    Charts,
    DriftRows,
    EstimateRows,
    Window,
    charts_to_draw,
    rows_for,
)
from services.plot_api.drift_feed import DriftFeed, DriftUnreadable
from services.plot_api.estimate_history import EstimateHistory
from services.plot_api.shards import ShardRowsTail
from services.plot_api.summary_feed import SummaryUnreadable, fetch_summary, sharded_summary
from services.plot_api.tail import MetricLogTail

log = logging.getLogger(__name__)

RENDERS = Counter("plot_renders", "Refreshes that redrew charts and wrote their PNGs")
RENDER_SECONDS = Histogram(
    "plot_render_seconds", "Time of one refresh that redrew: read new rows, render and write the charts behind"
)
CHART_SECONDS = Histogram("plot_chart_render_seconds", "Time to render one chart to PNG bytes", ["chart"])
ROWS_READ = Gauge("plot_rows_read", "Rows of metric_log.csv plot_api has read (every file kept, every shard): the charts' rows")
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


PLOT_SNAPSHOT_VERSION = 1  # of plot_state.snapshot's content; another is read as none (everything read again)


class PlotService:
    """Every PLOT_INTERVAL_S: take in new CSV rows and redraw the registry's charts behind them
    (see ``charts_to_draw``), and the drift charts when model_api's drift report changed, writing their PNGs."""

    def __init__(self, settings: Settings, charts: Charts = CHARTS) -> None:
        self.settings = settings
        self.charts = charts
        # One metric_api: its CSV in LOGS_DIR, as always. Several (the join's shards): their rows over HTTP.
        metric_apis = [str(url).rstrip("/") for url in settings.metric_apis]
        self.tail = (
            MetricLogTail(settings.LOGS_DIR / METRIC_LOG)
            if len(metric_apis) == 1
            else ShardRowsTail(metric_apis, exact_rows=settings.ALL_EXACT_ROWS)
        )
        ROWS_READ.set_function(lambda: self.tail.count)
        self.drift = DriftFeed(str(settings.MODEL_API_URL))
        self.estimates = EstimateHistory()  # metric_api's estimate, sampled at each refresh (issue 24)
        self.estimate_problem: str | None = None
        self._summaries = httpx.AsyncClient(timeout=2.0)
        self.figures = {name: chart.figure() for name, chart in charts.items()}
        self.images: dict[str, RenderedPng] = {}
        self.drawn: dict[str, tuple[int, int]] = {}
        self.refreshes = 0
        self.last_problem: str | None = None
        self._loop: asyncio.Task[None] | None = None
        self.snapshot_path = settings.LOGS_DIR / PLOT_SNAPSHOT
        self._snapshot_of: int | None = None  # tail.changes when the last snapshot was written
        self._snapshot_at = time.monotonic()

    def _start_from_snapshot(self) -> None:
        """Go on from the last snapshot of what was read (only the rows since are read at start);
        without a usable one, read everything (services/common/snapshots.py)."""
        try:
            self.tail.load(read_snapshot(self.snapshot_path, PLOT_SNAPSHOT_VERSION))
        except (SnapshotUnusable, KeyError, TypeError, ValueError) as exc:
            if self.snapshot_path.exists():
                log.warning("cannot start from the snapshot: %s; reading %s from the start", exc, self.tail.describe())
            return
        self._snapshot_of = self.tail.changes
        log.info("started from %s: %d rows; reading what came since", self.snapshot_path, self.tail.count)

    def write_snapshot(self) -> None:
        """A snapshot of what was read, when it changed since the last (between reads: runs after one)."""
        if self._snapshot_of == self.tail.changes:
            return
        changes = self.tail.changes
        snapshot = Snapshot({})
        self.tail.save(snapshot)
        write_snapshot(self.snapshot_path, PLOT_SNAPSHOT_VERSION, snapshot)
        self._snapshot_of, self._snapshot_at = changes, time.monotonic()

    async def _snapshot_quietly(self) -> None:
        """A snapshot that cannot be written (a full disk) is logged: the charts are not the worse for it."""
        try:
            await asyncio.to_thread(self.write_snapshot)
        except OSError as exc:
            self._snapshot_at = time.monotonic()
            log.error("cannot write %s: %s; the next start reads every row", self.snapshot_path, exc)
        except Exception:  # a snapshot only saves start-up time: its bug must not stop the charts or the shutdown
            self._snapshot_at = time.monotonic()
            log.exception("cannot write %s; the next start reads every row", self.snapshot_path)

    def problem(self) -> str | None:
        if self._loop is None or self._loop.done():
            return "the refresh loop is not running"
        return self.last_problem

    def start(self) -> None:
        self._start_from_snapshot()
        self._loop = asyncio.create_task(self._run(), name="plot-refresh")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        await self._snapshot_quietly()
        await self.drift.close()
        await self._summaries.aclose()
        self.tail.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
                self.last_problem = None
                if time.monotonic() - self._snapshot_at >= SNAPSHOT_PERIOD_S:
                    await self._snapshot_quietly()
            except OSError as exc:
                self.last_problem = f"cannot refresh the charts in {self.settings.LOGS_DIR}: {exc}"
                log.error("%s", self.last_problem)
            await asyncio.sleep(self.settings.PLOT_INTERVAL_S)

    async def refresh(self) -> list[str]:
        """Take in new rows and redraw the charts behind them; return the charts redrawn."""
        started = time.perf_counter()
        await asyncio.to_thread(self.tail.read_new)
        changes = self.tail.changes
        versions = dict.fromkeys(charts_to_draw(self.charts.values(), self.drawn, changes) if self.tail.count else [], changes)
        drift = await self._drift_rows()
        estimate = await self._estimate_rows()
        for window, fed in ((Window.DRIFT, drift), (Window.ESTIMATE, estimate)):
            if fed is None:
                continue
            for chart in self.charts.values():
                if chart.window is window and self.drawn.get(chart.name, (None, 0))[0] != fed.version:
                    versions[chart.name] = fed.version
        names = [name for name in self.charts if name in versions]  # in registry order
        if not names:
            return []
        self.refreshes += 1
        images = await asyncio.to_thread(self._render_and_write, names, drift, estimate)
        RENDERS.inc()
        RENDER_SECONDS.observe(time.perf_counter() - started)
        self.images = {**self.images, **images}  # published together, once written and counted
        self.drawn |= {name: (versions[name], self.refreshes) for name in names}
        return names

    async def _drift_rows(self) -> DriftRows | None:
        """model_api's drift report, if a chart draws it and model_api answers."""
        if not any(chart.window is Window.DRIFT for chart in self.charts.values()):
            return None
        report = await self.drift.latest()
        return None if report is None else DriftRows.of(report)

    async def _estimate_rows(self) -> EstimateRows | None:
        """metric_api's estimate sampled now into the history, if a chart draws it; the history's rows."""
        if not any(chart.window is Window.ESTIMATE for chart in self.charts.values()):
            return None
        try:
            if isinstance(self.tail, ShardRowsTail):
                summary: Summary | MergedSummary = await sharded_summary(self._summaries, self.tail)
            else:
                summary = await fetch_summary(self._summaries, str(self.settings.metric_apis[0]))
        except SummaryUnreadable as exc:
            self.estimate_problem = str(exc)
        else:
            self.estimate_problem = None
            self.estimates.add(time.time(), summary.estimate)
        return EstimateRows.of(self.estimates)

    def _render_and_write(
        self, names: list[str], drift: DriftRows | None, estimate: EstimateRows | None = None
    ) -> dict[str, RenderedPng]:
        """Draw the named charts and write each to LOGS_DIR (atomically). Runs in a thread."""
        charts = [self.charts[name] for name in names]
        fed: dict[Window, Any] = {Window.DRIFT: drift, Window.ESTIMATE: estimate}
        # Each window's rows are taken once, and only if a chart drawn now needs them.
        rows: dict[Window, Any] = {
            window: fed[window] if window in fed else rows_for(window, self.tail) for window in {chart.window for chart in charts}
        }
        images = {}
        for chart in charts:
            with CHART_SECONDS.labels(chart.name).time():
                data = chart.draw(self.figures[chart.name], rows[chart.window])
            images[chart.name] = RenderedPng.of(data, datetime.now(UTC))
            atomic_write(self.settings.LOGS_DIR / chart.file, data)
        return images


class State(TypedDict):
    plot: PlotService
    http: httpx.AsyncClient


def create_app(settings: Settings | None = None, charts: Charts = CHARTS) -> FastAPI:
    """plot_api over ``charts`` (the registry; tests pass their own)."""
    settings = settings or get_settings()
    service = PlotService(settings, charts)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        service.start()
        async with httpx.AsyncClient(base_url=str(settings.metric_apis[0]), timeout=2.0) as client:
            try:
                yield {"plot": service, "http": client}
            finally:
                await service.stop()

    app = service_app("plot_api", lifespan, service.problem, settings=settings)
    app.include_router(chart_router(charts))
    app.include_router(router)
    return app


async def get_service(request: Request) -> PlotService:
    return cast(PlotService, request.state.plot)  # put there by the lifespan's state


async def get_metric_client(request: Request) -> httpx.AsyncClient:
    return cast(httpx.AsyncClient, request.state.http)  # put there by the lifespan's state


Service = Annotated[PlotService, Depends(get_service)]
MetricClient = Annotated[httpx.AsyncClient, Depends(get_metric_client)]
router = APIRouter(tags=["plot"])


PNG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}},
    304: {"description": "unchanged since the ETag in If-None-Match"},
    404: {"description": "no rows yet, or no such chart"},
}


def png_response(service: PlotService, chart: str, if_none_match: str | None) -> Response:
    """A chart's current PNG from memory, with ETag/Last-Modified; 304 when the client has it."""
    image = service.images.get(chart)
    if image is None:
        if service.charts[chart].window is Window.DRIFT:
            detail = f"no {chart} chart yet: {service.drift.problem or 'it is drawn within PLOT_INTERVAL_S'}"
        elif service.charts[chart].window is Window.ESTIMATE:
            why = service.estimate_problem or "no prediction has carried an estimated error yet"
            detail = f"no {chart} chart yet: {why} (it is drawn within PLOT_INTERVAL_S of the first)"
        else:
            where = service.tail.describe()
            detail = f"no {chart} chart yet: {where} has no rows (it is drawn within PLOT_INTERVAL_S of the first)"
        return JSONResponse({"detail": detail}, status_code=404)
    headers = {"ETag": image.etag, "Last-Modified": image.last_modified, "Cache-Control": "no-cache"}
    if if_none_match is not None and (
        if_none_match.strip() == "*" or image.etag in (tag.strip() for tag in if_none_match.split(","))
    ):
        return Response(status_code=304, headers=headers)
    return Response(image.data, media_type="image/png", headers=headers)


def chart_router(charts: Charts) -> APIRouter:
    """``GET /plot/{image}``: one route for every chart in the registry.

    The route reads its path parameter and If-None-Match from the request itself, and documents them
    with ``openapi_extra``: FastAPI's parsing of the two (and of the service as a dependency) was a third
    of plot_api's CPU per PNG under load (py-spy), what made it cost more than ``GET /health``."""
    by_image = {chart.image: chart for chart in charts.values()}
    known = ", ".join(f"{chart.url} ({name})" for name, chart in charts.items())
    # Documented as an enum, but checked here rather than by FastAPI, whose refusal would be a 422.
    described = "the chart's file name in its URL"
    image_schema = {"type": "string", "description": described, "enum": list(by_image), "title": "Image"}
    parameters = [  # as FastAPI wrote them when it parsed the two itself
        {"name": "image", "in": "path", "required": True, "schema": image_schema, "description": described},
        {
            "name": "if-none-match",
            "in": "header",
            "required": False,
            "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "If-None-Match"},
        },
    ]
    router = APIRouter(tags=["plot"])

    @router.get(
        PLOT_ROUTE + "{image}",
        response_class=Response,
        responses=PNG_RESPONSES,
        summary="A chart's current PNG",
        description="\n".join(
            ["The charts (ETag, Last-Modified, 304 on If-None-Match):", ""]
            + [f"- {chart.describe()}" for chart in charts.values()]
        ),
        openapi_extra={"parameters": parameters},
    )
    async def chart_png(request: Request) -> Response:
        image = request.path_params["image"]
        chart = by_image.get(image)
        if chart is None:
            return JSONResponse({"detail": f"no chart at {PLOT_ROUTE}{image}; the charts are {known}"}, status_code=404)
        return png_response(cast(PlotService, request.state.plot), chart.name, request.headers.get("if-none-match"))

    return router


@router.get(
    "/api/summary",
    response_model=Summary | MergedSummary,
    responses={502: {"description": "metric_api did not answer, or not with a summary"}},
)
async def metric_summary(client: MetricClient, service: Service) -> Summary | MergedSummary | JSONResponse:
    """metric_api's /metrics/summary, relayed so the dashboard needs one origin only; with several
    metric_api's (the join's shards), one summary over all of them, naming any that did not answer."""
    if isinstance(service.tail, ShardRowsTail):
        return await sharded_summary(client, service.tail)
    try:
        return await fetch_summary(client, str(client.base_url))
    except SummaryUnreadable as exc:
        return JSONResponse({"detail": str(exc)}, status_code=502)


@router.get(
    "/api/by-time",
    response_model=ByTime,
    responses={502: {"description": "no metric_api answered, or not with a by-time view"}},
)
async def error_by_time(client: MetricClient, service: Service) -> ByTime | JSONResponse:
    """metric_api's /metrics/by-time (each shard's, merged when several), relayed for the dashboard's chart."""
    if isinstance(service.tail, ShardRowsTail):
        urls = [shard.url for shard in service.tail.shards]
        try:
            return await sharded_by_time(client, urls)
        except ByTimeUnreadable as exc:
            return JSONResponse({"detail": str(exc)}, status_code=502)
    try:
        return await fetch_by_time(client, str(client.base_url))
    except ByTimeUnreadable as exc:
        return JSONResponse({"detail": str(exc)}, status_code=502)


@router.get(
    "/api/drift", response_model=DriftReport, responses={502: {"description": "model_api did not answer, or not with a report"}}
)
async def model_drift(service: Service) -> DriftReport | JSONResponse:
    """model_api's GET /drift (at MODEL_API_URL), relayed so the dashboard needs one origin only."""
    try:
        return await service.drift.fetch()
    except DriftUnreadable as exc:
        return JSONResponse({"detail": str(exc)}, status_code=502)


def chart_figures(charts: Charts) -> str:
    """The dashboard's figure of each chart; the page fetches each ``data-src`` again as it is redrawn."""
    figures = []
    for name, chart in charts.items():
        src, caption = html.escape(chart.url.lstrip("/")), html.escape(chart.caption)
        when = {
            Window.DRIFT: "once model_api answers GET /drift",
            Window.ESTIMATE: "once predictions carry an estimated error",
        }.get(chart.window, "once the first rows are joined")
        figures.append(
            f'<figure><img id="{html.escape(name)}" data-src="{src}" alt="{caption} (drawn {when})">'
            f"<figcaption>{chart.window.value} · <code>{src}</code></figcaption></figure>"
        )
    return "\n  ".join(figures)


@router.get("/", response_class=HTMLResponse)
async def dashboard(service: Service) -> HTMLResponse:
    interval_ms = int(service.settings.PLOT_INTERVAL_S * 1000)
    page = DASHBOARD.replace("{{PLOT_INTERVAL_MS}}", str(interval_ms)).replace("{{CHART_FIGURES}}", chart_figures(service.charts))
    return HTMLResponse(page)
