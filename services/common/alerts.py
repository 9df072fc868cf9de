"""The one path every alert takes: a board of named alerts, each raised or cleared, each change
POSTed once to ``ALERT_WEBHOOK_URL`` in the same shape, logged, and counted in Prometheus.

A rule (the MAE detector, drift, the estimate check, a segment's alert) is a pure object that
decides; the service tells the board what it decided with ``set``, as often as it likes: only a
change of state is sent. The board is what ``/health`` or the summary shows of the alerts.

The payload, whatever the rule::

    {"alert": "mae", "state": "raised" | "cleared", "service": "metric_api", "at": 1700000000.0,
     "since": 1700000000.0, "summary": "one line for a person", "details": {...the rule's numbers}}

``since`` is when the alert went into the state it is in now (= ``at`` on a change).
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from prometheus_client import Counter, Gauge

from services.common.webhook import WebhookNotifier

log = logging.getLogger(__name__)

ALERT_RAISED = Gauge("monitor_alert_raised", "1 while the named alert is raised, else 0", ["alert"])
ALERT_CHANGES = Counter("monitor_alert_changes", "Changes of state of the named alert", ["alert", "state"])

State = Literal["raised", "cleared"]


@dataclass(frozen=True)
class AlertState:
    """One alert as the board holds it: its state now, since when, and the rule's last word on it."""

    name: str
    raised: bool = False
    since: float | None = None  # None: never changed state since the service started
    summary: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> State:
        return "raised" if self.raised else "cleared"

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "since": self.since, "summary": self.summary, "details": dict(self.details)}


@dataclass(frozen=True)
class AlertChange:
    """A change of one alert's state: what the webhook is sent."""

    alert: AlertState
    at: float

    @property
    def state(self) -> State:
        return self.alert.state

    def payload(self, service: str) -> dict[str, Any]:
        return {"alert": self.alert.name, "service": service, "at": self.at, **self.alert.to_json()}


class AlertBoard:
    """The service's alerts by name. ``set`` is cheap when nothing changes (call it per batch)."""

    def __init__(self, service: str, webhook_url: str | None = None) -> None:
        self.service = service
        self._alerts: dict[str, AlertState] = {}
        self.notifier = WebhookNotifier(webhook_url, service) if webhook_url else None

    def declare(self, name: str, summary: str = "") -> None:
        """Make ``name`` known (cleared), so that the board and Prometheus show it before it ever fires."""
        if name not in self._alerts:
            self._alerts[name] = AlertState(name, summary=summary)
            ALERT_RAISED.labels(name).set(0)

    def set(self, name: str, raised: bool, at: float, summary: str = "", details: Mapping[str, Any] | None = None) -> bool:
        """Record the rule's verdict on ``name``; True (and one webhook POST) when its state changed."""
        if name not in self._alerts:
            self.declare(name)
        old = self._alerts[name]
        changed = raised != old.raised
        new = replace(old, raised=raised, since=at if changed else old.since, summary=summary, details=dict(details or {}))
        self._alerts[name] = new
        if not changed:
            return False
        ALERT_RAISED.labels(name).set(1 if raised else 0)
        ALERT_CHANGES.labels(name, new.state).inc()
        if raised:
            log.warning("ALERT %s raised: %s", name, summary)
        else:
            log.info("alert %s cleared: %s", name, summary)
        if self.notifier is not None:
            self.notifier.send(AlertChange(new, at))
        return True

    def get(self, name: str) -> AlertState | None:
        return self._alerts.get(name)

    def forget(self, name: str) -> None:
        """Drop an alert that no longer applies (e.g. a model version gone), without a webhook POST."""
        if self._alerts.pop(name, None) is not None:
            ALERT_RAISED.remove(name)

    @property
    def raised(self) -> list[str]:
        return sorted(name for name, alert in self._alerts.items() if alert.raised)

    def key(self) -> tuple[tuple[str, bool, float | None], ...]:
        """Changes whenever an alert changes state (for a summary cache)."""
        return tuple((name, alert.raised, alert.since) for name, alert in sorted(self._alerts.items()))

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {name: alert.to_json() for name, alert in sorted(self._alerts.items())}

    async def close(self) -> None:
        if self.notifier is not None:
            await self.notifier.close()
