"""features_api's app in process, its broker link a stand-in: the routes, what they publish, /health."""

from httpx import AsyncClient, Response

from services.common.messages import FeaturesMessage, LabelMessage
from services.common.settings import Settings
from services.features_api.app import MAX_BURST, create_app
from tests.unit.in_process import in_process
from tests.unit.stand_in_link import StandInLink

SETTINGS = Settings(QUEUE_PREFIX="t.", FEATURES_INTERVAL_S=3600, FEATURES_SEED=7)


def test_a_burst_publishes_features_and_label_of_each_sample_under_one_id() -> None:
    link = StandInLink()

    async def scenario(client: AsyncClient) -> tuple[Response, Response]:
        burst = await client.post("/features/publish", json={"count": 3})
        return burst, await client.get("/features/status")

    burst, status = in_process(create_app(SETTINGS, link), scenario)
    assert burst.status_code == 200, burst.text
    ids = burst.json()["ids"]
    assert burst.json()["count"] == 3 and len(set(ids)) == 3 and ids == sorted(ids, key=float)
    features = [FeaturesMessage.model_validate_json(m.body) for m in link.to("t.features")]
    labels = [LabelMessage.model_validate_json(m.body) for m in link.to("t.y_true")]
    assert [f.id for f in features] == [label.id for label in labels] == ids
    assert [m.message_id for m in link.to("t.features")] == ids
    assert all(len(f.body) == 10 for f in features) and all(25 <= label.body <= 346 for label in labels)
    assert status.json() == {"sent": 3, "interval_s": 3600.0, "paused": False, "broker": "connected"}
    assert link.state == "closed"  # the lifespan closed it


def test_a_burst_size_outside_the_limits_is_refused_naming_them() -> None:
    link = StandInLink()

    async def scenario(client: AsyncClient) -> list[Response]:
        return [await client.post("/features/publish", json={"count": n}) for n in (0, -1, MAX_BURST + 1)]

    for answer in in_process(create_app(SETTINGS, link), scenario):
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"] == ["body", "count"]
    assert link.published == []


def test_without_a_broker_health_is_503_with_the_reason_and_a_burst_is_refused() -> None:
    link = StandInLink(problem="RabbitMQ at localhost:5672 is not reachable: connection refused")

    async def scenario(client: AsyncClient) -> tuple[Response, Response, Response]:
        health = await client.get("/health")
        return health, await client.post("/features/publish", json={"count": 1}), await client.get("/features/status")

    health, burst, status = in_process(create_app(SETTINGS, link), scenario)
    assert health.status_code == 503
    assert health.json() == {"status": "unavailable", "service": "features_api", "reason": link.down_because}
    assert burst.status_code == 503 and link.down_because in burst.json()["detail"]
    assert status.json()["broker"] == link.down_because
    assert link.published == []


def test_pause_and_resume_show_in_the_status() -> None:
    async def scenario(client: AsyncClient) -> list[bool]:
        paused = (await client.post("/features/pause")).json()["paused"]
        resumed = (await client.post("/features/resume")).json()["paused"]
        return [paused, resumed]

    assert in_process(create_app(SETTINGS, StandInLink()), scenario) == [True, False]


def test_health_and_metrics_answer_when_the_link_is_up() -> None:
    async def scenario(client: AsyncClient) -> tuple[Response, Response]:
        await client.post("/features/publish", json={"count": 2})
        return await client.get("/health"), await client.get("/metrics")

    health, metrics = in_process(create_app(SETTINGS, StandInLink()), scenario)
    assert health.json() == {"status": "ok", "service": "features_api"}
    assert "samples_published_total" in metrics.text
