"""``BodyLimit``: a request body over ``HTTP_BODY_MAX_BYTES`` is answered 413 before it is read: at
once when its Content-Length says so, else as soon as that many bytes came (a chunked body)."""

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
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


def _header(scope: Scope, name: bytes) -> str | None:
    value = next((value for key, value in scope["headers"] if key.lower() == name), None)
    return value.decode("latin-1").strip() if value is not None else None


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
