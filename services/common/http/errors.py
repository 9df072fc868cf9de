"""Whatever a body is, a 4xx that says what is wrong with it: 415 for one not sent as JSON, 400 for
one that cannot be read as JSON (not UTF-8, nested too deeply), 422 for JSON of the wrong shape,
quoting only a short excerpt of the bad input. ``service_app`` installs the two handlers."""

import json
from typing import Any

from fastapi import Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.common.http.excerpt import cut, excerpt

# A 422 names at most this many problems: a 10,000-row batch with one typo per row is not a 10 MB answer.
MAX_ERRORS = 20
# What json.loads raises for a body it cannot read, but for JSONDecodeError (which FastAPI answers with a
# 422 at its position): UnicodeDecodeError (a ValueError), ValueError (an integer of over 4,300 digits),
# RecursionError. FastAPI answers those with a 400 raised *from* the error, and that chain is what is
# recognised here, not its words ("There was an error parsing the body"); tests/unit/common/http/test_errors.py
# pins that FastAPI still chains it. The services' routes raise no 400 of their own (a bad value is a 422).
DECODER_ERRORS = (ValueError, RecursionError)


class QuotingResponse(JSONResponse):
    """JSON in ASCII (``\\uXXXX`` escapes): an answer that quotes what was sent must not fail on it,
    and JSON text may hold a lone surrogate (``"\\ud800"``), which UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, but one that never fails on what it quotes (bytes, NaN, 10 MB, deep nesting),
    and a 415 when the body was not sent as JSON (FastAPI then hands the raw bytes over)."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(
        isinstance(error.get("input"), bytes | bytearray) and tuple(error.get("loc", ()))[:1] == ("body",) for error in errors
    ):
        return JSONResponse({"detail": _not_json_detail(request)}, status_code=415)
    return QuotingResponse({"detail": [_readable(error) for error in errors[:MAX_ERRORS]]}, status_code=422)


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own answer, but its 400 for a body it could not read says what was wrong with it."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, DECODER_ERRORS):
        return JSONResponse({"detail": f"the body cannot be read as JSON: {_why_unreadable(exc.__cause__)}"}, status_code=400)
    return await http_exception_handler(request, exc)


def _not_json_detail(request: Request) -> str:
    sent = request.headers.get("content-type")
    return (
        "the body must be JSON, sent with the header Content-Type: application/json "
        f"(this request's Content-Type: {cut(sent, 60) if sent else 'none'}); "
        "with curl: curl -H 'content-type: application/json' -d '{...}'"
    )


def _readable(error: Any) -> dict[str, Any]:
    """One error of a 422, each field safe to serialise and short."""
    msg = str(error.get("msg", ""))
    ctx = error.get("ctx") or {}
    if error.get("type") == "json_invalid" and "error" in ctx:
        msg = f"{msg}: {ctx['error']}"  # what json.loads said, at the position in "loc"
    readable = {
        "type": str(error.get("type", "")),
        "loc": [part if isinstance(part, int) else cut(str(part), 60) for part in error.get("loc", ())],
        "msg": cut(msg, 300),
        "input": excerpt(error.get("input")),
    }
    if ctx:
        readable["ctx"] = {
            str(key): excerpt(value if isinstance(value, int | float | str) else str(value)) for key, value in ctx.items()
        }
    return readable


def _why_unreadable(cause: BaseException) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"it is not UTF-8 (byte {cause.object[cause.start : cause.start + 1]!r} at position {cause.start})"
    if isinstance(cause, RecursionError):
        return "it is nested too deeply"
    return cut(f"{type(cause).__name__}: {cause}", 200)
