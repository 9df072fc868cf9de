"""The alert webhook every service POSTs its alert changes to (``ALERT_WEBHOOK_URL``).

metric_api posts the MAE alert's changes, model_api the drift alert's. Each change is POSTed
from a background task, in order, so a slow or dead receiver never holds up the work that
caused the change.
"""

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)


class AlertChange(Protocol):
    """A change of an alert's state: what the webhook is sent."""

    @property
    def state(self) -> str: ...  # "raised" or "cleared"

    def payload(self, service: str) -> dict[str, Any]: ...


class WebhookNotifier:
    """One POST per alert change, JSON, in order; a failure is logged and retried twice, never raised."""

    ATTEMPTS = 3

    def __init__(self, url: str, service: str, timeout_s: float = 5.0, retry_delay_s: float = 1.0) -> None:
        self.url = url
        self._service = service
        self._timeout_s = timeout_s
        self._retry_delay_s = retry_delay_s
        self._changes: asyncio.Queue[AlertChange] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def send(self, change: AlertChange) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._deliver(), name="alert-webhook")
        self._changes.put_nowait(change)

    async def _deliver(self) -> None:
        async with httpx.AsyncClient(timeout=self._timeout_s) as client:
            while True:
                change = await self._changes.get()
                try:
                    await self._post(client, change)
                finally:
                    self._changes.task_done()

    async def _post(self, client: httpx.AsyncClient, change: AlertChange) -> None:
        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                answer = await client.post(self.url, json=change.payload(self._service))
                if answer.status_code < 500:
                    if answer.is_error:
                        log.warning("ALERT_WEBHOOK_URL %s refused the alert %s: %s", self.url, change.state, answer.status_code)
                    return
                problem = f"answered {answer.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            log.warning(
                "could not POST the alert %s to ALERT_WEBHOOK_URL %s (attempt %d of %d): %s",
                change.state, self.url, attempt, self.ATTEMPTS, problem,
            )  # fmt: skip
            if attempt < self.ATTEMPTS:
                await asyncio.sleep(self._retry_delay_s * attempt)

    async def close(self, grace_s: float = 2.0) -> None:
        """Give changes still queued a moment to go out, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changes.join(), grace_s)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
