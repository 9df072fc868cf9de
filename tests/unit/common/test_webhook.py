"""The alert webhook every service posts its alert changes to, against a small local HTTP receiver."""

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import pytest

from harness.processes import free_port
from services.common.webhook import WebhookNotifier


@dataclass(frozen=True)
class Change:
    """Any alert's change: the notifier needs its state and its payload, nothing else."""

    state: str
    value: float

    def payload(self, service: str) -> dict[str, Any]:
        return {"alert": self.state, "service": service, "value": self.value}


class Receiver:
    """A tiny HTTP server on 127.0.0.1 that records each POST body and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.port = free_port()
        self.status = status
        self.bodies: list[dict] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        self.bodies.append(json.loads(await reader.readexactly(length)))
        writer.write(f"HTTP/1.1 {self.status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> "Receiver":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


def test_each_change_is_posted_once_in_order() -> None:
    async def run() -> list[dict]:
        async with Receiver() as receiver:
            notifier = WebhookNotifier(f"http://127.0.0.1:{receiver.port}/hook", "some_api")
            notifier.send(Change("raised", 12.5))
            notifier.send(Change("cleared", 9.5))
            await notifier.close(grace_s=10)
            return receiver.bodies

    assert asyncio.run(run()) == [
        {"alert": "raised", "service": "some_api", "value": 12.5},
        {"alert": "cleared", "service": "some_api", "value": 9.5},
    ]


def test_an_unreachable_webhook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        notifier = WebhookNotifier(f"http://127.0.0.1:{free_port()}/hook", "some_api", timeout_s=1, retry_delay_s=0)
        notifier.send(Change("raised", 12.5))
        await notifier.close(grace_s=10)

    with caplog.at_level(logging.WARNING):
        asyncio.run(run())
    attempts = [r.getMessage() for r in caplog.records if "ALERT_WEBHOOK_URL" in r.getMessage()]
    assert len(attempts) == WebhookNotifier.ATTEMPTS
    assert "attempt 3 of 3" in attempts[-1] and "ConnectError" in attempts[-1]
