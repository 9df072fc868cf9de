"""model_api's ``GET /drift`` as plot_api reads it, parsed as ``DriftReport``
(services/common/contracts/drift.py): relayed to the dashboard (``/api/drift``) and drawn as the
drift chart. One HTTP client to ``MODEL_API_URL`` for both."""

import httpx

from services.common.contracts.drift import DRIFT_REPORT, DRIFT_ROUTE, DriftReport
from services.plot_api.fetching import fetch_contract

TIMEOUT_S = 2.0


class DriftUnreadable(Exception):
    """model_api did not answer GET /drift, or answered something that is not a drift report."""


class DriftFeed:
    """Fetches model_api's drift report; remembers why the last fetch failed, for the chart's 404."""

    def __init__(self, url: str, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self.problem: str | None = "not asked yet"

    async def fetch(self) -> DriftReport:
        """The report; DriftUnreadable when model_api does not answer it (``problem`` says how)."""
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.url, timeout=self._timeout_s)
        try:
            report: DriftReport = await fetch_contract(
                self._client,
                "",
                DRIFT_ROUTE,
                DRIFT_REPORT.validate_json,
                DriftUnreadable,
                f"model_api at {self.url}",
                "drift report",
            )
        except DriftUnreadable as exc:
            self.problem = str(exc)
            raise
        self.problem = None
        return report

    async def latest(self) -> DriftReport | None:
        """The report, or None when model_api does not answer it (``problem`` says why)."""
        try:
            return await self.fetch()
        except DriftUnreadable:
            return None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
