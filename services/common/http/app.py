"""``service_app``: a service's FastAPI app, with what every service answers wired in once, for
every route, those added later included (the package docstring lists the parts)."""

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.types import Lifespan

from services.common.http.body_limit import BodyLimit
from services.common.http.errors import http_error, validation_error
from services.common.http.head import HeadAsGet
from services.common.http.openapi import document
from services.common.http.ops import ops_router
from services.common.http.token import token_guard
from services.common.schema import FeatureSchema
from services.common.settings import Settings, get_settings


def service_app(
    service: str,
    lifespan: Lifespan[FastAPI],
    problem: Callable[[], str | None],
    details: Callable[[], dict[str, Any]] = dict,
    *,
    settings: Settings | None = None,
    features_schema: Callable[[], FeatureSchema] | None = None,
) -> FastAPI:
    """A service's FastAPI app: its lifespan, /health and /metrics, /docs and /redoc served from a
    pinned package (they work offline), HEAD on every GET route, the body limit, a 4xx for any bad
    body, and the API token.

    ``problem()`` is why the service is not ready (/health answers 503 with it), or None;
    ``details()`` adds fields to every /health answer (the broker a service is connected to,
    what a user should know even when it is ready). ``features_schema()`` is the model's schema
    now, for a service whose routes take features: its OpenAPI (/docs) shows them by name and kind.
    """
    settings = settings or get_settings()
    token = settings.API_TOKEN.get_secret_value() if settings.API_TOKEN is not None else None
    # The token guard is a dependency of the app, so of every route, those included later too.
    app = FastAPIOffline(title=service, lifespan=lifespan, dependencies=[Depends(token_guard(token))])
    app.include_router(ops_router(service, problem, details))
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    # The last added runs first: HEAD becomes GET, then the body's size is watched.
    app.add_middleware(BodyLimit, max_bytes=settings.HTTP_BODY_MAX_BYTES)
    app.add_middleware(HeadAsGet)
    document(app, protected=token is not None, features_schema=features_schema)
    return app
