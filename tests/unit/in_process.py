"""A service's FastAPI app in process: its lifespan runs as under uvicorn, requests go through
httpx's ASGITransport (no port, no server). Starlette's TestClient would do the same, but with
httpx it warns of its deprecation, and warnings are errors here."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` while its lifespan runs; each request sees the lifespan's state, as a server hands it."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(state or {})}, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state), base_url="http://testserver") as client:
            yield client


def in_process(app: FastAPI, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``scenario(client)`` against ``app`` served in process, lifespan and all."""

    async def run() -> T:
        async with serving(app) as client:
            return await scenario(client)

    return asyncio.run(run())
