"""HTTP bits every service shares, applied once by ``service_app`` to every route, those added
later included:

- ``GET /health`` (200, or 503 with the reason) and ``GET /metrics`` (Prometheus text);
- ``/docs`` (Swagger UI) and ``/redoc`` served from a pinned package, so they work offline;
- ``HEAD`` on every ``GET`` route (the same headers, no body);
- a request body over ``HTTP_BODY_MAX_BYTES`` is answered 413 before it is read;
- whatever the body, content type or encoding, a 4xx that says what is wrong: 415 for a body
  that is not sent as JSON, 400 for one that cannot be read as JSON (not UTF-8, nested too
  deeply), 422 for JSON of the wrong shape, quoting only a short excerpt of the bad input;
- with ``API_TOKEN`` set, every route that may change state (any method but GET, HEAD and
  OPTIONS) asks for ``Authorization: Bearer <API_TOKEN>`` (401 otherwise). A non-GET route
  that changes nothing opts out with ``openapi_extra=CHANGES_NOTHING``, which its OpenAPI
  operation then shows.

Request bodies are ``StrictBody`` models: JSON types as they are (``"3"`` and ``true`` are not 3).
"""

import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from services.common.amqp.errors import broker_gone
from services.common.messages import FEATURES_SCHEMA_MARK
from services.common.schema import FeatureSchema, SchemaViolation, problem_errors
from services.common.settings import Settings, get_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A 4xx quotes at most this many characters of a bad input.
EXCERPT_CHARS = 120
# Methods that never change state: open whatever API_TOKEN says.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# openapi_extra of a route that is not GET but changes nothing (it only computes): no token needed.
CHANGES_NOTHING: dict[str, Any] = {"x-changes-state": False}
SECURITY_SCHEME = "APIToken"


class StrictBody(BaseModel):
    """A JSON request body: ``"3"`` is not 3 and ``true`` is not 1, NaN and Infinity are no numbers,
    and an unknown field (a typo) is refused rather than ignored."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def service_app(
    service: str,
    lifespan: Lifespan[FastAPI],
    problem: Callable[[], str | None],
    details: Callable[[], dict[str, Any]] = dict,
    *,
    settings: Settings | None = None,
    features_schema: Callable[[], FeatureSchema] | None = None,
) -> FastAPI:
    """A service's FastAPI app: its lifespan, the ops routes and everything the module docstring lists.

    ``features_schema()`` is the model's schema now, for a service whose routes take features: its
    OpenAPI (/docs) shows those features by name and kind.

    ``problem()`` is why the service is not ready (/health answers 503 with it), or None;
    ``details()`` adds fields to every /health answer (the broker a service is connected to,
    what a user should know even when it is ready).
    """
    settings = settings or get_settings()
    token = settings.API_TOKEN.get_secret_value() if settings.API_TOKEN is not None else None
    # The token guard is a dependency of the app, so of every route, those included later too.
    app = FastAPIOffline(title=service, lifespan=lifespan, dependencies=[Depends(token_guard(token))])
    app.include_router(ops_router(service, problem, details))
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # The last added runs first: HEAD becomes GET, then the body's size is watched.
    app.add_middleware(BodyLimit, max_bytes=settings.HTTP_BODY_MAX_BYTES)
    app.add_middleware(HeadAsGet)
    _document_limits(app, protected=token is not None, features_schema=features_schema)
    return app


def schema_rows(
    schema: FeatureSchema, bodies: Sequence[Any], loc: Callable[[int], tuple[str | int, ...]]
) -> list[list[float | str | None]]:
    """Each features body checked against ``schema``, in schema order; a 422 naming every body's
    problems (at ``loc(i)`` in the request, then the feature) when any does not fit."""
    rows: list[list[float | str | None]] = []
    errors: list[dict[str, Any]] = []
    for i, body in enumerate(bodies):
        try:
            rows.append(schema.row(body))
        except SchemaViolation as exc:
            errors.extend(problem_errors(exc, loc(i), body))
            if len(errors) >= 20:
                break
    if errors:
        raise RequestValidationError(errors)
    return rows


# -- /health and /metrics


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
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


# -- answers a person can act on, whatever was sent


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> Any:
    """A bad input as a 4xx may quote it: small JSON values as they are, anything else (a large or
    deep structure, bytes, NaN, an object) as at most ``limit`` characters of text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**15 else _cut(_scalar_text(value), limit)
    if isinstance(value, float):
        return value if math.isfinite(value) else _scalar_text(value)
    if isinstance(value, str):
        return _cut(value, limit)
    if isinstance(value, list | tuple | dict):
        text, whole = _bounded_json(value, limit)
        return _plain(value) if whole else text
    return _cut(_scalar_text(value), limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _scalar_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value[: EXCERPT_CHARS * 4]).decode("utf-8", errors="replace")
    if isinstance(value, float):
        return json.dumps(value)  # NaN, Infinity as JavaScript writes them
    if isinstance(value, int) and not isinstance(value, bool):
        digits = value.bit_length() * 0.30103
        return str(value) if digits < 1000 else f"an integer of about {digits:.0f} digits"
    if isinstance(value, str):
        return json.dumps(value[: EXCERPT_CHARS + 1])
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return repr(value)[: EXCERPT_CHARS * 4]


_EXCERPT_DEPTH = 8


def _pieces(value: Any, depth: int) -> Iterator[str]:
    """``value`` as compact JSON-like text, piece by piece (the caller stops when it has enough)."""
    if depth > _EXCERPT_DEPTH:
        yield "…"
        return
    if isinstance(value, dict):
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            yield (", " if index else "") + _scalar_text(str(key)) + ": "
            yield from _pieces(item, depth + 1)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for index, item in enumerate(value):
            if index:
                yield ", "
            yield from _pieces(item, depth + 1)
        yield "]"
    else:
        yield _scalar_text(value)


def _bounded_json(value: Any, limit: int) -> tuple[str, bool]:
    """At most ``limit`` characters of ``value`` as text, and whether that is all of it."""
    text, size = [], 0
    for piece in _pieces(value, 0):
        if piece == "…" or size + len(piece) > limit:
            text.append(piece[: max(0, limit - size)])
            return "".join(text) + "…", False
        text.append(piece)
        size += len(piece)
    return "".join(text), True


def _plain(value: Any) -> Any:
    """A small structure (``_bounded_json`` saw all of it) made JSON-safe: NaN and the like as text."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return excerpt(value)


def _not_json_detail(request: Request) -> str:
    sent = request.headers.get("content-type")
    return (
        "the body must be JSON, sent with the header Content-Type: application/json "
        f"(this request's Content-Type: {_cut(sent, 60) if sent else 'none'}); "
        "with curl: curl -H 'content-type: application/json' -d '{...}'"
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, but one that never fails on what it quotes (bytes, NaN, 10 MB, deep nesting),
    and a 415 when the body was not sent as JSON (FastAPI then hands the raw bytes over)."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(
        isinstance(error.get("input"), bytes | bytearray) and tuple(error.get("loc", ()))[:1] == ("body",) for error in errors
    ):
        return JSONResponse({"detail": _not_json_detail(request)}, status_code=415)
    return JSONResponse({"detail": [_readable(error) for error in errors[:20]]}, status_code=422)


def _readable(error: Any) -> dict[str, Any]:
    """One error of a 422, each field safe to serialise and short."""
    msg = str(error.get("msg", ""))
    ctx = error.get("ctx") or {}
    if error.get("type") == "json_invalid" and "error" in ctx:
        msg = f"{msg}: {ctx['error']}"  # what json.loads said, at the position in "loc"
    readable = {
        "type": str(error.get("type", "")),
        "loc": [part if isinstance(part, int) else _cut(str(part), 60) for part in error.get("loc", ())],
        "msg": _cut(msg, 300),
        "input": excerpt(error.get("input")),
    }
    if ctx:
        readable["ctx"] = {
            str(key): excerpt(value if isinstance(value, int | float | str) else str(value)) for key, value in ctx.items()
        }
    return readable


PARSE_FAILURE = "There was an error parsing the body"  # FastAPI's 400, whatever went wrong


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own answer, but its 400 for a body it could not read says what was wrong with it."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == PARSE_FAILURE and exc.__cause__ is not None:
        return JSONResponse({"detail": f"the body cannot be read as JSON: {_why_unreadable(exc.__cause__)}"}, status_code=400)
    return await http_exception_handler(request, exc)


def _why_unreadable(cause: BaseException) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"it is not UTF-8 (byte {cause.object[cause.start : cause.start + 1]!r} at position {cause.start})"
    if isinstance(cause, RecursionError):
        return "it is nested too deeply"
    return _cut(f"{type(cause).__name__}: {cause}", 200)


# -- middleware: the body's size, the token, HEAD


class BodyTooLarge(StarletteHTTPException):
    """Raised while a body is read, as an HTTPException so that FastAPI passes it on as it is."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes (HTTP_BODY_MAX_BYTES)")


class BodyLimit:
    """413 for a body over ``max_bytes``: at once when its Content-Length says so, else as soon as
    that many bytes came (a chunked body), before anything is parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            if declared.isdigit():
                await _answer(scope, receive, send, 413, BodyTooLarge(self.max_bytes).detail)
            else:
                await _answer(scope, receive, send, 400, "the Content-Length header is not a number")
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge as exc:  # raised where no exception handler answers it
            if started:
                raise
            await _answer(scope, receive, send, 413, exc.detail)


def token_guard(token: str | None) -> Callable[[Request], Awaitable[None]]:
    """The dependency service_app puts on every route: with a token, a request to a route that may
    change state (any method but GET, HEAD and OPTIONS, unless the route is marked ``CHANGES_NOTHING``)
    needs ``Authorization: Bearer <token>``, else 401. Compared in constant time; never logged."""
    expected = token.encode() if token is not None else None

    async def require_token(request: Request) -> None:
        if expected is None or request.method in SAFE_METHODS or not changes_state(request.scope.get("route")):
            return
        given = _header_bytes(request.scope, b"authorization") or b""
        scheme, _, credentials = given.partition(b" ")
        if scheme.lower() == b"bearer" and secrets.compare_digest(credentials.strip(), expected):
            return
        raise StarletteHTTPException(
            401,
            "this route changes state: send the header Authorization: Bearer <API_TOKEN> (the service's API_TOKEN setting)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    return require_token


def changes_state(route: object) -> bool:
    """Whether a route may change state: the default for every method but GET, HEAD and OPTIONS."""
    return changes_state_operation(getattr(route, "openapi_extra", None) or {})


def changes_state_operation(operation: dict[str, Any]) -> bool:
    return operation.get("x-changes-state", True) is not False


class HeadAsGet:
    """HEAD answered as the GET it stands for, without the body (FastAPI's GET routes answer 405 to it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # A copy: the server's own scope keeps saying HEAD, so it sends no body either.
        await self.app({**scope, "method": "GET"}, receive, headers_only)


def _header_bytes(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key.lower() == name), None)


def _header(scope: Scope, name: bytes) -> str | None:
    value = _header_bytes(scope, name)
    return value.decode("latin-1").strip() if value is not None else None


async def _answer(
    scope: Scope, receive: Receive, send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


# -- the OpenAPI document says all of it


def _document_limits(app: FastAPI, *, protected: bool, features_schema: Callable[[], FeatureSchema] | None = None) -> None:
    """Add to the app's OpenAPI what service_app answers besides the routes' own: 413 and 415 for a
    route with a body and, with a token set, the bearer scheme and 401 on the routes that ask for it;
    the model's features where a route takes them (made again when another schema is in service)."""
    made = app.openapi
    made_for: list[str] = []  # the fingerprint of the schema the cached document shows

    def openapi() -> dict[str, Any]:
        fingerprint = features_schema().fingerprint if features_schema is not None else ""
        if app.openapi_schema is not None and made_for == [fingerprint]:
            return app.openapi_schema
        app.openapi_schema = None
        schema = made()
        if features_schema is not None:
            _show_features(schema, features_schema())
        made_for[:] = [fingerprint]
        for path in schema.get("paths", {}).values():
            for method, operation in path.items():
                responses = operation.setdefault("responses", {})
                if "requestBody" in operation:
                    responses.setdefault("413", {"description": "the body is larger than HTTP_BODY_MAX_BYTES"})
                    responses.setdefault("415", {"description": "the body was not sent as JSON (Content-Type: application/json)"})
                    responses.setdefault("400", {"description": "the body cannot be read as JSON (not UTF-8, nested too deeply)"})
                if protected and method.upper() not in SAFE_METHODS and changes_state_operation(operation):
                    operation["security"] = [{SECURITY_SCHEME: []}]
                    responses.setdefault("401", {"description": "no Authorization: Bearer <API_TOKEN>, or another token"})
        if protected:
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes[SECURITY_SCHEME] = {
                "type": "http",
                "scheme": "bearer",
                "description": "the service's API_TOKEN; asked by every route that changes state",
            }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _show_features(document: dict[str, Any], schema: FeatureSchema) -> None:
    """Every features body in ``document`` (marked FEATURES_SCHEMA_MARK) becomes a reference to the
    model's features, described once under components/schemas/Features."""

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get(FEATURES_SCHEMA_MARK):
                return {"$ref": "#/components/schemas/Features"}
            return {key: visit(value) for key, value in node.items()}
        if isinstance(node, list):
            return [visit(item) for item in node]
        return node

    document["paths"] = visit(document.get("paths", {}))
    components = document.setdefault("components", {})
    components["schemas"] = visit(components.get("schemas", {}))
    components["schemas"]["Features"] = schema.json_schema()


# -- logging and running


class _AmqpLibraryLines(logging.Filter):
    """aio-pika and aiormq log each dropped connection with tracebacks, and each failed
    reconnect attempt; BrokerLink already says both in one line, so theirs become one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("aiormq", "aio_pika")):
            record.exc_info, record.exc_text = None, None
        return True


class BrokerOutageLines(logging.Filter):
    """An error of the broker going away — aio-pika's channel close callbacks failing with
    ChannelInvalidStateError during a broker restart, one ERROR per channel, or a task's traceback
    reported by asyncio ("exception was never retrieved") or any other logger — is not a crash:
    it becomes one warning line, said at most once a minute however many report it. BrokerLink
    says the outage itself, and /health answers 503 until it is over."""

    QUIET_S = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._said_at = -math.inf

    @staticmethod
    def _exception(record: logging.LogRecord) -> BaseException | None:
        if record.exc_info:
            return record.exc_info[1]
        if record.name.startswith(("aio_pika", "aiormq")) and isinstance(record.args, tuple):
            # aio-pika logs a failed callback as "Callback %r error: %s: %s" with the exception as an argument
            return next((arg for arg in record.args if isinstance(arg, BaseException)), None)
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = self._exception(record)
        if exc is None or not broker_gone(exc):
            return True
        now = time.monotonic()
        if now - self._said_at < self.QUIET_S:
            return False
        self._said_at = now
        record.msg = (
            f"{record.getMessage()}: {type(exc).__name__}: {str(exc) or 'channel closed'} — the broker went away; "
            f"the connection is restored by itself (more of these within {self.QUIET_S:g} s are not logged)"
        )
        record.args, record.exc_info, record.exc_text = None, None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    outages = BrokerOutageLines()
    for handler in logging.getLogger().handlers:
        handler.addFilter(outages)
        handler.addFilter(_AmqpLibraryLines())
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
    # Its warning comes once a second while the broker is down; BrokerLink says the outage once.
    logging.getLogger("aio_pika.robust_connection").setLevel(logging.ERROR)


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run one service in the foreground; SIGTERM/Ctrl-C run the lifespan's shutdown."""
    setup_logging()
    # No access log: dashboards and scrapers poll these routes many times a second.
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=10)
