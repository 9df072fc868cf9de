"""The MAE alert: raised while the ``last_100`` MAE is above ``MAE_ALERT``.

``MaeAlert`` is the state (no I/O); ``WebhookNotifier`` POSTs each change of it to
``ALERT_WEBHOOK_URL`` from a background task, in order, so a slow or dead receiver never
holds up the batch that caused the change.
"""

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import httpx

from services.metric_api.stats import LAST_N_WINDOWS, finite_or_none

log = logging.getLogger(__name__)

ALERT_WINDOW = "last_100"
ALERT_ROWS = LAST_N_WINDOWS[ALERT_WINDOW]


@dataclass(frozen=True)
class AlertChange:
    state: Literal["raised", "cleared"]
    window: str
    mae: float | None
    threshold: float
    at: float

    def payload(self, service: str) -> dict[str, Any]:
        return {"alert": self.state, "service": service, **{k: v for k, v in asdict(self).items() if k != "state"}}


class MaeAlert:
    """Raised when the window's MAE goes above the threshold, cleared when it is back at or below."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.mae: float | None = None
        self.since: float | None = None

    @property
    def raised(self) -> bool:
        return self.since is not None

    def check(self, mae: float | None, now: float) -> AlertChange | None:
        """Take the current MAE (None: no rows yet); return the change, if this is one."""
        above = mae is not None and mae > self.threshold
        self.mae = finite_or_none(mae)  # reported as JSON
        if above == self.raised:
            return None
        self.since = now if above else None
        return AlertChange("raised" if above else "cleared", ALERT_WINDOW, self.mae, self.threshold, now)

    def state(self) -> dict[str, Any] | None:
        """The summary's ``alert``: null while not raised."""
        if self.since is None:
            return None
        return {"window": ALERT_WINDOW, "mae": self.mae, "threshold": self.threshold, "since": self.since}


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
