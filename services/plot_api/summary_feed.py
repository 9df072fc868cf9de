"""metric_api's ``GET /metrics/summary`` as plot_api reads it, parsed as ``Summary``
(services/common/contracts/summary.py), for the dashboard's ``/api/summary``: relayed from one
metric_api, or merged over the join's shards (merged_summary.py)."""

import asyncio
import time

import httpx

from services.common.contracts.summary import SUMMARY_ROUTE, MergedSummary, Summary
from services.plot_api.fetching import fetch_contract
from services.plot_api.merged_summary import ShardSummary, merge_summaries
from services.plot_api.shards import ShardRowsTail


class SummaryUnreadable(Exception):
    """A metric_api did not answer its summary, or answered something that is not one."""


async def fetch_summary(client: httpx.AsyncClient, url: str) -> Summary:
    """The summary of the metric_api at ``url``; SummaryUnreadable saying why there is none."""
    url = url.rstrip("/")
    return await fetch_contract(
        client, url, SUMMARY_ROUTE, Summary.model_validate_json, SummaryUnreadable, f"metric_api at {url}", "summary"
    )


async def sharded_summary(client: httpx.AsyncClient, tail: ShardRowsTail) -> MergedSummary:
    """Every shard's summary, merged with the windows over the union of their rows (as of the last look)."""

    async def one(url: str, rows_read: int) -> ShardSummary:
        try:
            return ShardSummary(url, await fetch_summary(client, url), rows_read=rows_read)
        except SummaryUnreadable as exc:
            return ShardSummary(url, None, str(exc), rows_read)

    shards = await asyncio.gather(*(one(shard.url, shard.rows) for shard in tail.shards))
    union = await asyncio.to_thread(tail.union_summary, time.time())
    return merge_summaries(shards, union)
