"""model_api's ``GET /drift`` as plot_api reads it: relayed to the dashboard (``/api/drift``) and
drawn as the drift chart. One HTTP client to ``MODEL_API_URL`` for both."""

from typing import Any

import httpx

TIMEOUT_S = 2.0


class DriftFeed:
    """Fetches model_api's drift report; remembers why the last fetch failed, for the chart's 404."""

    def __init__(self, url: str, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self.problem: str | None = "not asked yet"

    async def fetch(self) -> dict[str, Any]:
        """The report; httpx.HTTPError when model_api does not answer it (``problem`` says how)."""
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.url, timeout=self._timeout_s)
        try:
            answer = await self._client.get("/drift")
            answer.raise_for_status()
            report: dict[str, Any] = answer.json()
        except httpx.HTTPError as exc:
            self.problem = f"model_api at {self.url} did not answer GET /drift: {type(exc).__name__}: {exc}"
            raise
        self.problem = None
        return report

    async def latest(self) -> dict[str, Any] | None:
        """The report, or None when model_api does not answer (``problem`` says why)."""
        try:
            return await self.fetch()
        except httpx.HTTPError:
            return None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
