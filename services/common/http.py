"""HTTP bits every service shares: /health, /metrics, and running the app with uvicorn."""

import logging
from collections.abc import Callable

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def ops_router(service: str, problem: Callable[[], str | None]) -> APIRouter:
    """``GET /health`` (200 when ``problem()`` is None, else 503 with it) and ``GET /metrics``."""
    router = APIRouter(tags=["operations"])

    @router.get("/health", responses={503: {"description": "not ready, with the reason"}})
    def health() -> JSONResponse:
        reason = problem()
        if reason is None:
            return JSONResponse({"status": "ok", "service": service})
        return JSONResponse({"status": "unavailable", "service": service, "reason": reason}, status_code=503)

    @router.get("/metrics", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run one service in the foreground; SIGTERM/Ctrl-C run the lifespan's shutdown."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    uvicorn.run(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=10)
