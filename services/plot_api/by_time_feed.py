"""metric_api's ``GET /metrics/by-time`` as plot_api reads it, parsed as ``ByTime``
(services/common/contracts/by_time.py), for the dashboard's ``/api/by-time``: relayed from one
metric_api, or merged over the join's shards.

Merged: a bucket's predictions and labelled rows are the sums of the shards' (exact), its statistics
``merge_windows``' (count, mae, rmse, me, max_ae, baseline_mae and skill exact; r2 and the
percentiles null), the buckets those any answering shard has; a shard that does not answer is named
in ``approximate`` and its predictions are missing.
"""

import asyncio
from collections.abc import Sequence

import httpx

from services.common.contracts.by_time import BY_TIME_ROUTE, ByTime, Dropped, TimeBucket
from services.plot_api.fetching import fetch_contract
from services.plot_api.merged_summary import merge_windows


class ByTimeUnreadable(Exception):
    """A metric_api did not answer its by-time view, or answered something that is not one."""


async def fetch_by_time(client: httpx.AsyncClient, url: str) -> ByTime:
    url = url.rstrip("/")
    return await fetch_contract(
        client, url, BY_TIME_ROUTE, ByTime.model_validate_json, ByTimeUnreadable, f"metric_api at {url}", "by-time view"
    )


def merge_by_time(views: Sequence[ByTime], missing: Sequence[str] = ()) -> ByTime:
    """One view over the shards' (see the module's docstring)."""
    starts: dict[float, list[TimeBucket]] = {}
    for view in views:
        for bucket in view.buckets:
            starts.setdefault(bucket.start, []).append(bucket)
    buckets = []
    for start in sorted(starts):
        mine = starts[start]
        predictions = sum(b.predictions for b in mine)
        labelled = sum(b.labelled for b in mine)
        buckets.append(
            TimeBucket(
                start=start,
                end=mine[0].end,
                predictions=predictions,
                labelled=labelled,
                labelled_share=labelled / predictions if predictions else None,
                stats=merge_windows([b.stats for b in mine]),
            )
        )
    approximate = ["stats: r2 and the percentiles are null (they do not merge from the shards' numbers)"]
    approximate += [f"the shard at {url} did not answer: its predictions are missing" for url in missing]
    return ByTime(
        bucket_s=views[0].bucket_s if views else 0.0,
        buckets_kept=views[0].buckets_kept if views else 0,
        buckets=buckets,
        dropped=Dropped(predictions=sum(v.dropped.predictions for v in views), labelled=sum(v.dropped.labelled for v in views)),
        approximate=approximate,
    )


async def sharded_by_time(client: httpx.AsyncClient, urls: Sequence[str]) -> ByTime:
    """Every shard's view, merged; ByTimeUnreadable when none answers."""
    answers = await asyncio.gather(*(fetch_by_time(client, url) for url in urls), return_exceptions=True)
    views = [answer for answer in answers if isinstance(answer, ByTime)]
    if not views:
        problems = [str(answer) for answer in answers if isinstance(answer, BaseException)]
        raise ByTimeUnreadable("; ".join(problems) or "no metric_api to ask")
    return merge_by_time(views, [url for url, answer in zip(urls, answers, strict=True) if not isinstance(answer, ByTime)])
