"""``BodyLimit``: a request body over ``HTTP_BODY_MAX_BYTES`` is answered 413 before it is read — at
once when its Content-Length says so, else as soon as that many bytes came (a chunked body) — and
the connection is closed after the answer.

Before it is closed, the rest of the body is read and dropped, within bounds (below): a server that
closes a connection with bytes still unread in it makes the kernel reset it, and a client that sends
its whole body before it reads (Python's urllib, a raw socket) then loses the 413 it had not read
yet: "connection reset by peer", never why. nginx does the same ("lingering close", 30 s, 5 s idle).

Starlette's RequestBodyLimitMiddleware (FastAPI's ``max_body_size``, in the pinned FastAPI 0.165 and
Starlette 1.10) counts chunked bodies too, but is not used: for a declared Content-Length over the
limit it lets a route that reads no body run (``POST /model/reload`` would reload) and only then
swaps its answer for a 413; that 413 is plain text that names no setting; and it does not drain.
"""

import asyncio
import contextlib

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The drain's bounds. A refused body is read to at most HTTP_BODY_MAX_BYTES + DRAIN_BYTES (80 MiB at the
# default 16 MiB): four times the default limit, so a client that sent a batch a few times too large
# reads why, in well under a second on one machine or a LAN and about 5 s at 100 Mbit/s. A body declared
# larger is not drained at all (the client would be reset all the same), and no drain outlasts DRAIN_S, or
# DRAIN_IDLE_S without a byte (nginx's lingering_time and lingering_timeout).
DRAIN_BYTES = 64 << 20
DRAIN_S = 30.0
DRAIN_IDLE_S = 5.0


class BodyTooLarge(HTTPException):
    """Raised while a body is read, as an HTTPException so that FastAPI passes it on as it is."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes (HTTP_BODY_MAX_BYTES)")


class BodyLimit:
    """413 for a body over ``max_bytes``, then the rest of it drained (the module docstring says why)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        drain_bytes: int = DRAIN_BYTES,
        drain_s: float = DRAIN_S,
        drain_idle_s: float = DRAIN_IDLE_S,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes
        self.drain_s = drain_s
        self.drain_idle_s = drain_idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked = _length_and_chunked(scope)
        if length is None and not chunked:  # HTTP/1.1: no body (GET /health and the like), nothing to watch
            await self.app(scope, receive, send)
            return
        if length is not None and not length.isdigit():
            await _answer(scope, receive, send, 400, "the Content-Length header is not a number")
            return
        body = _WatchedBody(self, receive, send, int(length) if length is not None else None)
        if body.declared is not None and body.declared > self.max_bytes:
            body.over = True
            await _answer(scope, body.receive, body.send, 413, BodyTooLarge(self.max_bytes).detail)
            return
        try:
            await self.app(scope, body.receive, body.send)
        except BodyTooLarge as exc:  # raised where no exception handler answers it
            if body.started:
                raise
            await _answer(scope, body.receive, body.send, 413, exc.detail)


class _WatchedBody:
    """One request's body as the app reads it, and the app's answer: once the body is over the limit,
    the answer closes the connection, but only after its last byte is sent and the rest of the body drained."""

    __slots__ = ("_receive", "_send", "declared", "limit", "more", "over", "received", "started")

    def __init__(self, limit: BodyLimit, receive: Receive, send: Send, declared: int | None) -> None:
        self.limit = limit
        self._receive = receive
        self._send = send
        self.declared = declared  # the Content-Length, if any
        self.received = 0
        self.more = True  # the client may still be sending
        self.over = False
        self.started = False

    async def receive(self) -> Message:
        message = await self._take()
        if self.received > self.limit.max_bytes:
            self.over = True
            raise BodyTooLarge(self.limit.max_bytes)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if self.over:
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        elif self.over and message["type"] == "http.response.body" and not message.get("more_body", False):
            # The whole answer goes out first (its Content-Length lets the client read it); the server
            # closes the connection after the last message, so the drain comes before that one.
            await self._send({**message, "more_body": True})
            await self._drain()
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await self._send(message)

    async def _take(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.more = message.get("more_body", False)
        else:  # http.disconnect
            self.more = False
        return message

    async def _drain(self) -> None:
        end = self.limit.max_bytes + self.limit.drain_bytes
        if self.declared is not None and self.declared > end:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limit.drain_s
        with contextlib.suppress(TimeoutError):
            while self.more and self.received <= end:
                async with asyncio.timeout_at(min(deadline, loop.time() + self.limit.drain_idle_s)):
                    await self._take()


def _length_and_chunked(scope: Scope) -> tuple[str | None, bool]:
    """The request's Content-Length as sent, and whether it has a Transfer-Encoding (a chunked body)."""
    length, chunked = None, False
    for key, value in scope["headers"]:
        name = key.lower()
        if name == b"content-length":
            length = value.decode("latin-1").strip()
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
