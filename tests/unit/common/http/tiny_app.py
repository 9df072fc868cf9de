"""A tiny service built with service_app, served in process: a POST that changes something, one that
only computes, a GET, and a POST that takes the model's features."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI

from services.common.http.app import service_app
from services.common.http.bodies import StrictBody, schema_rows
from services.common.http.token import CHANGES_NOTHING
from services.common.messages import FeaturesBody
from services.common.schema import DIABETES, FeatureSchema
from services.common.settings import Settings
from tests.unit.in_process import in_process

TOKEN = "the-token-of-this-test-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Order(StrictBody):
    count: int
    price: float = 1.0


class Sample(StrictBody):
    features: FeaturesBody


class Samples(StrictBody):
    samples: list[Sample]


def tiny_app(features_schema: Callable[[], FeatureSchema] | None = None, **settings: Any) -> tuple[FastAPI, list[Any]]:
    """The app and the list of what its POST /orders took; POST /samples checks features against
    ``features_schema()`` (the diabetes demo's by default) and answers the rows."""
    changes: list[Any] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield

    app = service_app("tiny", lifespan, lambda: None, settings=Settings(**settings), features_schema=features_schema)
    router = APIRouter()

    @router.post("/orders")
    async def order(body: Order) -> dict[str, int]:
        changes.append(body)
        return {"count": body.count}

    @router.post("/quote", openapi_extra=CHANGES_NOTHING)
    async def quote(body: Order) -> dict[str, float]:
        return {"total": body.count * body.price}

    @router.get("/orders")
    async def orders() -> dict[str, int]:
        return {"orders": len(changes)}

    @router.post("/samples")
    async def samples(body: Samples) -> list[list[float | str | None]]:
        schema = features_schema() if features_schema is not None else DIABETES
        return schema_rows(schema, [sample.features for sample in body.samples], lambda i: ("body", "samples", i, "features"))

    app.include_router(router)
    return app, changes


def serve(app: FastAPI, scenario: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    return in_process(app, scenario)


def post_each(app: FastAPI, requests: list[dict[str, Any]], path: str = "/orders") -> list[httpx.Response]:
    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.post(path, **request) for request in requests]

    return serve(app, scenario)
