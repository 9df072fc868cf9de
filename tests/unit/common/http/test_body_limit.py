"""A body over HTTP_BODY_MAX_BYTES: a 413 before it is read, then the rest drained within bounds, so that a
client still sending reads the 413 (tests/integration/test_hostile_http.py checks that over real sockets)."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from services.common.http.body_limit import DRAIN_BYTES, DRAIN_IDLE_S, DRAIN_S, BodyLimit
from tests.unit.common.http.tiny_app import serve, tiny_app

LIMIT = 2048
JSON = {"content-type": "application/json"}
MiB = 1 << 20


def test_a_body_over_the_limit_is_a_413_naming_it_whether_its_length_is_declared_or_not() -> None:
    app, changes = tiny_app(HTTP_BODY_MAX_BYTES=LIMIT)
    padded = b'{"count": 1, "price": 1.0' + b" " * 4000 + b"}"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: a chunked upload
        for start in range(0, len(padded), 500):
            yield padded[start : start + 500]

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await client.post("/orders", content=padded, headers=JSON),
            await client.post("/orders", content=chunks(), headers=JSON),
            await client.post("/orders", content=padded[:2000] + b"}", headers=JSON),
        ]

    declared, streamed, within = serve(app, scenario)
    for answer in (declared, streamed):
        assert answer.status_code == 413 and "2048 bytes (HTTP_BODY_MAX_BYTES)" in answer.json()["detail"]
        assert answer.headers["connection"] == "close"
    assert within.status_code == 200 and len(changes) == 1


class Upload:
    """A request body of ``chunks`` pieces of ``size`` bytes, counting how many the server took."""

    def __init__(self, chunks: int, size: int) -> None:
        self.chunks, self.piece, self.taken = chunks, b" " * size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.taken += 1
            yield self.piece


def upload(upload: Upload, headers: dict[str, str] | None = None) -> httpx.Response:
    app, _ = tiny_app(HTTP_BODY_MAX_BYTES=MiB)

    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/orders", content=upload, headers={**JSON, **(headers or {})})

    answer: httpx.Response = serve(app, scenario)
    return answer


def test_the_rest_of_a_refused_body_is_read_before_the_answer_ends() -> None:
    """A client that sends its whole body before it reads would otherwise be reset before it reads the 413."""
    chunked, declared = Upload(40, 64 * 1024), Upload(40, 64 * 1024)
    assert upload(chunked).status_code == 413 and chunked.taken == 40
    assert upload(declared, {"content-length": str(40 * 64 * 1024)}).status_code == 413 and declared.taken == 40


def test_the_drain_stops_at_its_bound_and_a_body_declared_larger_is_not_drained() -> None:
    endless = Upload(10_000, MiB)  # 10 GB, chunked
    assert upload(endless).status_code == 413
    assert (MiB + DRAIN_BYTES) // MiB <= endless.taken <= (MiB + DRAIN_BYTES) // MiB + 2
    huge = Upload(10_000, MiB)
    assert upload(huge, {"content-length": str(10_000 * MiB)}).status_code == 413 and huge.taken <= 1


async def reads_the_body(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads the whole body, then answers."""
    while (await receive()).get("more_body", False):
        pass
    await JSONResponse({"read": True})(scope, receive, send)


def refused_while_the_client(
    receive: Receive, drain_s: float = DRAIN_S, drain_idle_s: float = DRAIN_IDLE_S
) -> tuple[list[Message], float]:
    """What the server is sent for a chunked body over 1 KiB when the client then behaves as ``receive`` says,
    and how long the answer took."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/", "headers": [(b"transfer-encoding", b"chunked")]}
    began = time.monotonic()
    asyncio.run(BodyLimit(reads_the_body, 1024, drain_s=drain_s, drain_idle_s=drain_idle_s)(scope, receive, send))
    return sent, time.monotonic() - began


def test_a_client_that_stops_sending_is_not_waited_for_longer_than_the_idle_bound() -> None:
    first = True

    async def stalls(*_: Any) -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b" " * 2048, "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    sent, took = refused_while_the_client(stalls, drain_idle_s=0.2)
    assert sent[0]["status"] == 413 and b"HTTP_BODY_MAX_BYTES" in sent[1]["body"]
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert 0.15 < took < 2


def test_a_client_that_trickles_is_not_waited_for_longer_than_the_drain_time() -> None:
    async def trickles(*_: Any) -> Message:
        await asyncio.sleep(0.02)
        return {"type": "http.request", "body": b" " * 2048, "more_body": True}

    sent, took = refused_while_the_client(trickles, drain_s=0.3)
    assert sent[0]["status"] == 413 and sent[-1]["more_body"] is False
    assert 0.25 < took < 2
