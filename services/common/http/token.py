"""``API_TOKEN``: with it set, every route that may change state asks for ``Authorization: Bearer
<API_TOKEN>`` (401 otherwise). That is any method but GET, HEAD and OPTIONS, on every route, those
added later included; a non-GET route that changes nothing (it only computes) opts out with
``openapi_extra=CHANGES_NOTHING``, which its OpenAPI operation then shows.

FastAPI's ``HTTPBearer`` reads the header and describes the scheme. It is called from the guard
rather than declared as a dependency: the guard is a dependency of the whole app, and FastAPI
would then mark every route, GET /health included, as asking for the token in the OpenAPI
document; ``openapi.py`` marks the routes that really do, by ``asks_for_token``.
"""

import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Request
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException

# Methods that never change state: open whatever API_TOKEN says.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# openapi_extra of a route that is not GET but changes nothing (it only computes): no token needed.
CHANGES_NOTHING: dict[str, Any] = {"x-changes-state": False}
BEARER = HTTPBearer(
    scheme_name="APIToken",
    description="the service's API_TOKEN; asked by every route that changes state",
    auto_error=False,  # the guard says what to send, and only on the routes that ask
)


def asks_for_token(method: str, operation: Mapping[str, Any]) -> bool:
    """Whether a route (its method, its OpenAPI operation or ``openapi_extra``) asks for the token:
    by default every method but GET, HEAD and OPTIONS."""
    return method.upper() not in SAFE_METHODS and operation.get("x-changes-state", True) is not False


def token_guard(token: str | None) -> Callable[[Request], Awaitable[None]]:
    """The dependency service_app puts on every route: with a token, a request to a route that
    ``asks_for_token`` needs ``Authorization: Bearer <token>``, else 401. Compared in constant time;
    never logged."""
    expected = token.encode() if token is not None else None

    async def require_token(request: Request) -> None:
        if expected is None or request.method in SAFE_METHODS:
            return
        if not asks_for_token(request.method, getattr(request.scope.get("route"), "openapi_extra", None) or {}):
            return
        given = await BEARER(request)
        # Headers are decoded as latin-1: encoded back, they are the bytes that were sent.
        if given is not None and secrets.compare_digest(given.credentials.encode("latin-1"), expected):
            return
        raise HTTPException(
            401,
            "this route changes state: send the header Authorization: Bearer <API_TOKEN> (the service's API_TOKEN setting)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    return require_token
