"""Reading another service's JSON answer as its contract (services/common/contracts), or saying why
not: the one way plot_api fetches metric_api's summary and by-time view and model_api's drift report."""

from collections.abc import Callable
from typing import TypeVar

import httpx
from pydantic import ValidationError

from services.common.contracts import refusal

T = TypeVar("T")


async def fetch_contract(
    client: httpx.AsyncClient,
    url: str,
    route: str,
    read: Callable[[bytes], T],
    unreadable: type[Exception],
    service: str,
    what: str,
) -> T:
    """``GET url + route`` read by ``read`` (a contract's ``model_validate_json``); ``unreadable``
    naming the service and what went wrong when it does not answer or answers something else.
    ``url`` may be empty for a client made with a ``base_url`` (then ``service`` names it whole)."""
    try:
        answer = await client.get(f"{url}{route}")
        answer.raise_for_status()
        return read(answer.content)
    except httpx.HTTPError as exc:
        raise unreadable(f"{service} did not answer GET {route}: {type(exc).__name__}: {exc}") from exc
    except ValidationError as exc:
        raise unreadable(f"{service} answered GET {route} with no {what} plot_api can read: {refusal(exc)}") from exc
