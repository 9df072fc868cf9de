"""HTTP bits every service shares: /health, /metrics, and running the app with uvicorn."""

import logging
import math
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Lifespan

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def service_app(
    service: str,
    lifespan: Lifespan[FastAPI],
    problem: Callable[[], str | None],
    details: Callable[[], dict[str, str]] = dict,
) -> FastAPI:
    """A service's FastAPI app: its lifespan, the ops routes, and readable 422s."""
    app = FastAPI(title=service, lifespan=lifespan)
    app.include_router(ops_router(service, problem, details))
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN/Infinity have no JSON form; say what was sent
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, but one that can echo NaN/Infinity inputs instead of failing with a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = [{k: _json_safe(v) for k, v in error.items() if k != "ctx"} for error in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def ops_router(service: str, problem: Callable[[], str | None], details: Callable[[], dict[str, str]] = dict) -> APIRouter:
    """``GET /health`` (200 when ``problem()`` is None, else 503 with it; both with ``details()``,
    e.g. the broker a service is connected to) and ``GET /metrics``."""
    router = APIRouter(tags=["operations"])

    @router.get("/health", responses={503: {"description": "not ready, with the reason"}})
    async def health() -> JSONResponse:
        reason = problem()
        if reason is None:
            return JSONResponse({"status": "ok", "service": service, **details()})
        return JSONResponse({"status": "unavailable", "service": service, "reason": reason, **details()}, status_code=503)

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


class _AmqpLibraryLines(logging.Filter):
    """aio-pika and aiormq log each dropped connection with tracebacks, and each failed
    reconnect attempt; BrokerLink already says both in one line, so theirs become one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("aiormq", "aio_pika")):
            record.exc_info, record.exc_text = None, None
        return True


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_AmqpLibraryLines())
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run one service in the foreground; SIGTERM/Ctrl-C run the lifespan's shutdown."""
    setup_logging()
    # No access log: dashboards and scrapers poll these routes many times a second.
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=10)
