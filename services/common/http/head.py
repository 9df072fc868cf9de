"""``HEAD`` on every ``GET`` route: the same status and headers, no body. FastAPI's GET routes
answer HEAD with 405 (still in the pinned 0.165), and a monitor's or a proxy's check often uses it."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """HEAD answered as the GET it stands for, without the body."""

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
