"""model_api: the app — its lifespan runs the service (services/model_api/service.py), its routes are
services/model_api/routes.py."""

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from services.common.amqp.link import Link
from services.common.http.app import service_app
from services.common.settings import Settings, get_settings
from services.model_api.bodies import Unpredictable
from services.model_api.drift_watch import refusal_kind
from services.model_api.routes import router
from services.model_api.service import ModelService


class State(TypedDict):
    model: ModelService


def create_app(settings: Settings | None = None, link: Link | None = None) -> FastAPI:
    """The model_api app; ``link`` replaces the broker connection (in-process tests)."""
    settings = settings or get_settings()
    service = ModelService(settings, link)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        service.start()
        service.listen_for_sighup()
        try:
            yield {"model": service}
        finally:
            await service.stop()

    app = service_app(
        "model_api",
        lifespan,
        service.link.problem,
        lambda: {**service.link.details(), "alerts": service.drift.alerts.to_json()},  # every alert of model_api
        settings=settings,
        features_schema=lambda: service.model.schema,
    )
    app.include_router(router)
    count_refused_predict_bodies(app, service)
    return app


def count_refused_predict_bodies(app: FastAPI, service: ModelService) -> None:
    """Count each /predict body refused with a 422 by reason (data quality), then answer as usual."""
    answer = app.exception_handlers[RequestValidationError]

    async def counted(request: Request, exc: Exception) -> Response:
        if request.url.path == "/predict" and isinstance(exc, RequestValidationError) and not isinstance(exc, Unpredictable):
            service.drift.refuse("http", refusal_kind(exc.errors()))
        response = answer(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(RequestValidationError, counted)
