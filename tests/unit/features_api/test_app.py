"""features_api's app in process, its broker link a stand-in: the routes, what they publish, /health."""

import pytest
from httpx import AsyncClient, Response
from sklearn.datasets import load_diabetes

from services.common.messages import FEATURE_NAMES, FeaturesMessage, LabelMessage
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


def test_a_scenario_changes_what_is_sent_until_it_is_deleted() -> None:
    link = StandInLink()
    bmi = FEATURE_NAMES.index("bmi")
    data = load_diabetes().data

    async def scenario(client: AsyncClient) -> list[Response]:
        return [
            await client.post("/features/scenario", json={"shift": {"bmi": 3.0}, "noise": 0}),
            await client.get("/features/scenario"),
            await client.post("/features/publish", json={"count": 30}),
            await client.delete("/features/scenario"),
            await client.post("/features/publish", json={"count": 30}),
        ]

    set_, shown, _, deleted, _ = in_process(create_app(SETTINGS, link), scenario)
    assert set_.status_code == 200 and set_.json() == shown.json()
    assert shown.json()["active"] is True and shown.json()["shift"] == {"bmi": 3.0}
    assert shown.json()["noise"] == dict.fromkeys(FEATURE_NAMES, 0.0) and shown.json()["since"] is not None
    assert shown.json()["std"]["bmi"] == pytest.approx(data[:, bmi].std())
    assert deleted.json()["active"] is False and deleted.json()["shift"] == {}
    sent = [FeaturesMessage.model_validate_json(m.body).body[bmi] for m in link.to("t.features")]
    # the 30 sent during the scenario are 3 std up; the 30 after it are values of the data again
    shifted_low = data[:, bmi].min() + 3 * data[:, bmi].std()
    assert all(value >= shifted_low - 1e-12 for value in sent[:30])
    assert all(value in set(data[:, bmi].tolist()) for value in sent[30:])


@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        ({"shift": {"bmx": 1.0}}, ["body", "shift", "bmx"], "the features are age, sex, bmi, bp, s1, s2, s3, s4, s5, s6"),
        ({"noise": {"BMI": 1.0}}, ["body", "noise", "BMI"], "the features are age, sex, bmi"),
        ({"scale": {"bmi": 11}}, ["body", "scale", "bmi"], "less than or equal to 10"),
        ({"shift": {"bmi": "x"}}, ["body", "shift", "bmi"], "number"),
        ({"drift": {"bmi": 1}}, ["body", "drift"], "Extra inputs"),
    ],
)
def test_a_bad_scenario_is_a_422_naming_the_problem_and_changes_nothing(body: dict, where: list, says: str) -> None:
    async def scenario(client: AsyncClient) -> tuple[Response, Response]:
        return await client.post("/features/scenario", json=body), await client.get("/features/scenario")

    refused, shown = in_process(create_app(SETTINGS, StandInLink()), scenario)
    assert refused.status_code == 422
    errors = refused.json()["detail"]
    assert any(e["loc"][: len(where)] == where and says in e["msg"] for e in errors), errors
    assert shown.json()["active"] is False
