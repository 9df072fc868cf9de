"""The routes every service has for its operators: ``GET /health`` and ``GET /metrics``."""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

# What /health would answer, for Prometheus (deploy/prometheus: the alert ServiceNotReady).
SERVICE_READY = Gauge("service_ready", "1 while GET /health answers 200 (broker connection and consumers up), else 0")


def ops_router(service: str, problem: Callable[[], str | None], details: Callable[[], dict[str, Any]] = dict) -> APIRouter:
    """``GET /health`` (200 when ``problem()`` is None, else 503 with it; both with ``details()``,
    e.g. the broker a service is connected to) and ``GET /metrics``."""
    router = APIRouter(tags=["operations"])

    @router.get("/health", responses={503: {"description": "not ready, with the reason"}})
    async def health() -> JSONResponse:
        reason = problem()
        extra = details()
        if reason is None:
            return JSONResponse({"status": "ok", "service": service, **extra})
        return JSONResponse({"status": "unavailable", "service": service, "reason": reason, **extra}, status_code=503)

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        SERVICE_READY.set(0 if problem() else 1)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
