"""``API_TOKEN``: with it set, every route that may change state asks for ``Authorization: Bearer
<API_TOKEN>`` (401 otherwise). That is any method but GET, HEAD and OPTIONS, on every route, those
added later included; a non-GET route that changes nothing (it only computes) opts out with
``openapi_extra=CHANGES_NOTHING``, which its OpenAPI operation then shows (``openapi.py`` marks the
routes that ask, by ``asks_for_token``)."""

import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException

# Methods that never change state: open whatever API_TOKEN says.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# openapi_extra of a route that is not GET but changes nothing (it only computes): no token needed.
CHANGES_NOTHING: dict[str, Any] = {"x-changes-state": False}
SECURITY_SCHEME = "APIToken"


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
        given = next((value for key, value in request.scope["headers"] if key.lower() == b"authorization"), b"")
        scheme, _, credentials = given.partition(b" ")
        if scheme.lower() == b"bearer" and secrets.compare_digest(credentials.strip(), expected):
            return
        raise HTTPException(
            401,
            "this route changes state: send the header Authorization: Bearer <API_TOKEN> (the service's API_TOKEN setting)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    return require_token
