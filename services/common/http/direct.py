"""``DirectRoute``: a route on the request path of the user's application (model_api's ``POST
/predict``) that does per request only what its endpoint needs.

FastAPI's own handler solves the route's dependencies each time (a generic walk over every
parameter, query, header, cookie and cache key), builds an error context and validates the
answer again through the response model: about half of model_api's CPU per ``/predict``
(py-spy, docs/performance.md). A ``DirectRoute`` is declared as any route, and FastAPI documents
it from the same signature; only its handler differs, through ``APIRoute.get_route_handler``,
FastAPI's documented place for a custom route class:

- the endpoint is ``async def endpoint(body: SomeModel, request: Request) -> SomeAnswer``;
- the app's dependencies (``FastAPI(dependencies=...)``: the token guard) and the route's own
  must each take the ``Request`` alone, and are awaited with it; a router between the two is not
  looked at, so the route goes on a router without dependencies of its own;
- the body is read as FastAPI reads it (parsed and validated in one pass where it is good), and
  refused as FastAPI refuses it: the same 415 (not
  sent as JSON), 400 (not readable as JSON), 422 (a JSON error at its position, a missing body,
  the model's errors under ``body``), raised as the same exceptions, so the app's handlers answer
  (tests/unit/common/http/test_direct.py holds the two routes side by side);
- a pydantic model returned is answered as its JSON, a ``Response`` as it is.
"""

import contextlib
import email.message
import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, get_type_hints

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

Endpoint = Callable[[Any, Request], Awaitable[BaseModel | Response]]
M = TypeVar("M", bound=BaseModel)


class DirectRoute(APIRoute):
    """An APIRoute whose handler skips FastAPI's per-request dependency solving and response model
    (the module docstring says what it does instead). ``route_class=DirectRoute`` on the decorator."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        body_model = _body_model(self.endpoint)
        own = [_request_only(dependency.call) for dependency in self.dependant.dependencies]
        endpoint: Endpoint = self.endpoint
        status_code = self.status_code or 200

        async def handler(request: Request) -> Response:
            shared = [_request_only(dependency.dependency) for dependency in request.app.router.dependencies]
            for guard in [*shared, *(guard for guard in own if guard not in shared)]:
                await guard(request)
            value = await valid_body(request, body_model)
            answer = await endpoint(value, request)
            if isinstance(answer, Response):
                return answer
            return Response(answer.model_dump_json(), status_code=status_code, media_type="application/json")

        return handler


async def valid_body(request: Request, model: type[M]) -> M:
    """The body as ``model``, or the exception FastAPI raises for it. A JSON body is first parsed and
    validated in one pass by pydantic (its JSON parser, in Rust): what it takes is what FastAPI's
    path takes; what it refuses goes FastAPI's path, so that every refusal is FastAPI's own."""
    if _sent_as_json(request.headers.get("content-type")):
        with contextlib.suppress(ValidationError):
            return model.model_validate_json(await request.body())
    body = await json_body(request)
    try:
        return model.model_validate(body, from_attributes=True)  # as FastAPI validates a body
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None


async def json_body(request: Request) -> Any:
    """The request's body as FastAPI hands it to a route: the parsed JSON when it was sent as JSON,
    the raw bytes when sent as anything else (which the model then refuses: a 415 here); a 422
    for no body or JSON with an error at a position, a 400 chained from the error for any other
    that cannot be read."""
    data = await request.body()
    if not data:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    if not _sent_as_json(request.headers.get("content-type")):
        return data
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ],
            body=exc.doc,
        ) from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8, an integer of over 4,300 digits, nested too deeply
        raise HTTPException(400, "There was an error parsing the body") from exc


@functools.lru_cache(maxsize=64)
def _sent_as_json(content_type: str | None) -> bool:
    """application/json or application/<anything>+json, as FastAPI's strict content type check reads it."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _body_model(endpoint: Callable[..., Any]) -> type[BaseModel]:
    hints = get_type_hints(endpoint)
    parameters = list(inspect.signature(endpoint).parameters)
    if len(parameters) != 2 or hints.get(parameters[1]) is not Request:
        raise TypeError(f"a DirectRoute's endpoint takes (body: a pydantic model, request: Request), not {parameters}")
    model = hints.get(parameters[0])
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"a DirectRoute's endpoint takes its body as a pydantic model first, not {model!r}")
    return model


@functools.cache  # per function: its signature is read once, whichever app asks
def _request_only(call: Callable[..., Any] | None) -> Callable[[Request], Awaitable[Any]]:
    if call is None or not inspect.iscoroutinefunction(call):
        raise TypeError(f"a DirectRoute's dependencies are coroutine functions of the Request alone, not {call!r}")
    hints = get_type_hints(call)
    if [hints.get(name) for name in inspect.signature(call).parameters] != [Request]:
        raise TypeError(f"a DirectRoute's dependencies take the Request alone: {call.__qualname__} does not")
    return call
