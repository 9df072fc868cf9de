"""Concurrent POST /predict requests share one predict call and one publish round (group commit), on
the real broker: each id published exactly once and confirmed before its answer; a message the broker
returns holds only its own request; a request that stops waiting loses no other."""

import asyncio
from collections import Counter
from pathlib import Path

import aio_pika
import httpx
import pytest
from prometheus_client import REGISTRY
from sklearn.datasets import load_diabetes

from services.common.amqp.topology import Y_PRED, declare, shard_of, shard_queue
from services.common.messages import PredictionMessage
from services.common.settings import Settings
from services.model_api.app import create_app
from tests.unit.in_process import serving
from tests.unit.model_api.test_app import expected

pytestmark = [pytest.mark.broker]

SHARDS = 2  # y_pred in two queues: one of them deleted makes the broker return what goes there
WAIT_S = 30.0  # a guard against a hang


def groups_so_far() -> tuple[float, float]:
    sample = REGISTRY.get_sample_value
    return (
        sample("http_predict_groups_total", {"what": "groups"}) or 0.0,
        sample("http_predict_groups_total", {"what": "requests"}) or 0.0,
    )


async def taken_off(amqp_url: str, queues: list[str]) -> Counter[str]:
    """How many times each id is in ``queues`` (every message ready there, taken off)."""
    found: Counter[str] = Counter()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)
            while (message := await queue.get(fail=False)) is not None:
                found[PredictionMessage.model_validate_json(message.body).id] += 1
                await message.ack()
    return found


async def until_healthy(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(WAIT_S):
        while (await client.get("/health")).status_code != 200:  # noqa: ASYNC110 - /health is what says the link is up
            await asyncio.sleep(0.05)


@pytest.fixture
def settings(amqp_url: str, queue_prefix: str, model_path: Path) -> Settings:
    return Settings(AMQP_URL=amqp_url, QUEUE_PREFIX=queue_prefix, MODEL_PATH=model_path, METRIC_SHARDS=SHARDS)


def test_concurrent_predictions_share_groups_and_each_is_published_once_before_its_answer(settings: Settings) -> None:
    rows = load_diabetes().data[:60].tolist()
    ids = [f"1700000000.{n:06d}" for n in range(len(rows))]
    queues = [shard_queue(settings, Y_PRED, shard) for shard in range(SHARDS)]

    async def scenario() -> tuple[list[httpx.Response], Counter[str], tuple[float, float]]:
        async with serving(create_app(settings)) as client:
            await until_healthy(client)
            before = groups_so_far()
            answers = await asyncio.wait_for(
                asyncio.gather(
                    *(client.post("/predict", json={"id": i, "features": row}) for i, row in zip(ids, rows, strict=True))
                ),
                WAIT_S,
            )
            after = groups_so_far()
            # Confirmed before the answers: every one is in its queue now, not later.
            published = await taken_off(str(settings.AMQP_URL), queues)
        return answers, published, (after[0] - before[0], after[1] - before[1])

    answers, published, (groups, requests) = asyncio.run(scenario())
    assert [answer.status_code for answer in answers] == [200] * len(rows), [a.text for a in answers if a.status_code != 200]
    assert [answer.json()["id"] for answer in answers] == ids
    want = expected(settings.MODEL_PATH, rows)
    assert [answer.json()["prediction"] for answer in answers] == pytest.approx(list(want), rel=1e-12)
    assert published == Counter(ids), "each id published exactly once"
    assert requests == len(rows)
    assert groups < len(rows) / 2, f"{groups:g} groups for {len(rows)} concurrent requests: they were not grouped"


def test_a_returned_prediction_holds_only_its_own_request_and_a_cancelled_one_loses_no_other(settings: Settings) -> None:
    """Shard 1's y_pred queue is deleted: the broker returns the predictions that go there, and the
    publisher retries them until the queue is back. The requests of shard 0 are answered meanwhile;
    one request of shard 1 stops waiting (its client went away); once the queue is back, every other
    request of shard 1 is answered, and each served id is published exactly once."""
    rows = load_diabetes().data[:40].tolist()
    ids = [f"1700000001.{n:06d}" for n in range(len(rows))]
    held = [i for i in ids if shard_of(i, SHARDS) == 1]
    free = [i for i in ids if shard_of(i, SHARDS) == 0]
    assert len(held) >= 3 and len(free) >= 3, "the ids must fall in both shards"
    gone = shard_queue(settings, Y_PRED, 1)
    url = str(settings.AMQP_URL)

    async def scenario() -> tuple[dict[str, httpx.Response], set[str], set[str], BaseException | None, Counter[str]]:
        async with serving(create_app(settings)) as client:
            await until_healthy(client)
            broker = await aio_pika.connect_robust(url)
            async with broker:
                channel = await broker.channel()
                await channel.queue_delete(gone)
                requests = {
                    i: asyncio.create_task(client.post("/predict", json={"id": i, "features": row}))
                    for i, row in zip(ids, rows, strict=True)
                }
                await asyncio.wait([requests[i] for i in free], timeout=10)
                await asyncio.sleep(1.0)  # the returned ones are being retried meanwhile
                waiting = {i for i in held if not requests[i].done()}
                answered_meanwhile = {i for i in free if requests[i].done()}
                requests[held[0]].cancel()
                await declare(channel, gone)
                await asyncio.wait([requests[i] for i in held[1:]], timeout=WAIT_S)
                cancelled = (await asyncio.gather(requests[held[0]], return_exceptions=True))[0]
            answered = {i: task.result() for i, task in requests.items() if i != held[0] and task.done()}
            published = await taken_off(url, [shard_queue(settings, Y_PRED, shard) for shard in range(SHARDS)])
        gave_up = cancelled if isinstance(cancelled, BaseException) else None
        return answered, waiting, answered_meanwhile, gave_up, published

    answered, waiting, answered_meanwhile, cancelled, published = asyncio.run(scenario())
    assert answered_meanwhile == set(free), "a request was held by another's returned prediction"
    assert waiting == set(held), "a request whose prediction the broker returned was answered before it was confirmed"
    assert isinstance(cancelled, asyncio.CancelledError)
    assert sorted(answered) == sorted(i for i in ids if i != held[0]), "a request was lost"
    assert all(answer.status_code == 200 for answer in answered.values())
    served = Counter(answered.keys())
    assert {i: published[i] for i in served} == served, "each served id published exactly once"
    assert published[held[0]] <= 1  # the cancelled one: published at most once (its client never saw it)
