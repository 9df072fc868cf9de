"""features_api's app in process, its broker link a stand-in: the routes, what they publish, /health,
the pause kept across restarts, the demo loop switched off, and the demo's delayed labels."""

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient, Response
from sklearn.datasets import load_diabetes

from services.common.delay import BUCKET_RATIO, LabelDelay, bucket_start_s
from services.common.files import FEATURES_STATE
from services.common.messages import ID_RULE, FeaturesMessage, LabelMessage
from services.common.schema import DIABETES, DIABETES_NAMES
from services.common.settings import Settings
from services.features_api.app import create_app
from services.features_api.intake import MAX_ITEMS
from services.features_api.publisher import MAX_BURST
from tests.unit.in_process import in_process
from tests.unit.stand_in_link import StandInLink

ROW = [0.038, 0.05, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # No registration at MODEL_PATH: the demo draws the diabetes rows scikit-learn ships (the default schema).
    return Settings(
        QUEUE_PREFIX="t.", FEATURES_INTERVAL_S=3600, FEATURES_SEED=7, LOGS_DIR=tmp_path, MODEL_PATH=tmp_path / "none.pkl"
    )


def post(path: str, body: dict[str, Any]) -> Any:
    async def scenario(client: AsyncClient) -> Response:
        return await client.post(path, json=body)

    return scenario


def test_a_burst_publishes_features_and_label_of_each_sample_under_one_id(settings: Settings) -> None:
    link = StandInLink()

    async def scenario(client: AsyncClient) -> tuple[Response, Response]:
        burst = await client.post("/features/publish", json={"count": 3})
        return burst, await client.get("/features/status")

    burst, status = in_process(create_app(settings, link), scenario)
    assert burst.status_code == 200, burst.text
    ids = burst.json()["ids"]
    assert burst.json()["count"] == 3 and len(set(ids)) == 3 and ids == sorted(ids, key=float)
    features = [FeaturesMessage.model_validate_json(m.body) for m in link.to("t.features")]
    labels = [LabelMessage.model_validate_json(m.body) for m in link.to("t.y_true")]
    assert [f.id for f in features] == [label.id for label in labels] == ids
    assert [m.sample_id for m in link.to("t.features")] == ids
    # each message its own AMQP message_id: the broker names a message it returns by that id alone
    assert len({m.message_id for m in link.published}) == len(link.published) == 6
    assert all(len(f.body) == 10 for f in features) and all(25 <= label.body <= 346 for label in labels)
    assert all(m.expiration_ms is None for m in link.published)
    assert features[0].schema_id == DIABETES.fingerprint  # a list: in the order of this schema
    assert status.json() == {
        "sent": 3, "interval_s": 3600.0, "paused": False, "loop": True, "label_delay_s": "0", "broker": "connected",
        "demo": "draws from scikit-learn's diabetes data",
        "schema": f"{DIABETES.fingerprint}: 10 features (10 numeric, 0 categorical)",
    }  # fmt: skip
    assert link.state == "closed"  # the lifespan closed it


def test_a_burst_size_outside_the_limits_is_refused_naming_them(settings: Settings) -> None:
    link = StandInLink()

    async def scenario(client: AsyncClient) -> list[Response]:
        return [await client.post("/features/publish", json={"count": n}) for n in (0, -1, MAX_BURST + 1)]

    for answer in in_process(create_app(settings, link), scenario):
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"] == ["body", "count"]
    assert link.published == []


def test_without_a_broker_health_is_503_with_the_reason_and_nothing_is_taken(settings: Settings) -> None:
    link = StandInLink(problem="RabbitMQ at localhost:5672 is not reachable: connection refused")

    async def scenario(client: AsyncClient) -> list[Response]:
        return [
            await client.get("/health"),
            await client.post("/features/publish", json={"count": 1}),
            await client.get("/features/status"),
            await client.post("/labels", json={"labels": [{"id": "a-1", "y_true": 1.0}]}),
            await client.post("/samples", json={"samples": [{"features": ROW}]}),
        ]

    health, burst, status, labels, samples = in_process(create_app(settings, link), scenario)
    assert health.status_code == 503
    assert health.json() == {"status": "unavailable", "service": "features_api", "reason": link.down_because}
    assert burst.status_code == 503 and link.down_because in burst.json()["detail"]
    assert status.json()["broker"] == link.down_because
    for refused in (labels, samples):
        assert refused.status_code == 503 and link.down_because in refused.json()["detail"]
    assert link.published == []


def test_pause_and_resume_show_in_the_status(settings: Settings) -> None:
    async def scenario(client: AsyncClient) -> list[bool]:
        paused = (await client.post("/features/pause")).json()["paused"]
        resumed = (await client.post("/features/resume")).json()["paused"]
        return [paused, resumed]

    assert in_process(create_app(settings, StandInLink()), scenario) == [True, False]


def test_a_pause_survives_a_restart_and_so_does_a_resume(settings: Settings) -> None:
    async def paused(client: AsyncClient) -> bool:
        return bool((await client.get("/features/status")).json()["paused"])

    async def pause(client: AsyncClient) -> bool:
        return bool((await client.post("/features/pause")).json()["paused"])

    async def resume(client: AsyncClient) -> bool:
        return bool((await client.post("/features/resume")).json()["paused"])

    assert in_process(create_app(settings, StandInLink()), paused) is False
    assert in_process(create_app(settings, StandInLink()), pause) is True
    assert in_process(create_app(settings, StandInLink()), paused) is True  # a new process: still paused
    assert in_process(create_app(settings, StandInLink()), resume) is False
    assert in_process(create_app(settings, StandInLink()), paused) is False


def test_a_pause_that_cannot_be_saved_says_so_with_the_file(settings: Settings) -> None:
    (settings.LOGS_DIR / FEATURES_STATE).mkdir()  # a folder where the file should go: cannot be replaced

    answer = in_process(create_app(settings, StandInLink()), post("/features/pause", {}))
    assert answer.status_code == 500 and str(settings.LOGS_DIR / FEATURES_STATE) in answer.json()["detail"]
    assert "until a restart" in answer.json()["detail"]


def test_an_unreadable_state_file_starts_the_loop_unpaused(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    (settings.LOGS_DIR / FEATURES_STATE).write_text("{not json")

    async def scenario(client: AsyncClient) -> bool:
        return bool((await client.get("/features/status")).json()["paused"])

    assert in_process(create_app(settings, StandInLink()), scenario) is False
    assert FEATURES_STATE in caplog.text


@pytest.mark.parametrize(("loop", "some_published"), [(True, True), (False, False)])
def test_features_loop_off_publishes_nothing_by_itself(tmp_path: Path, loop: bool, some_published: bool) -> None:
    settings = Settings(QUEUE_PREFIX="t.", FEATURES_INTERVAL_S=0.01, FEATURES_LOOP=loop, LOGS_DIR=tmp_path)
    link = StandInLink()

    async def scenario(client: AsyncClient) -> Any:
        await asyncio.sleep(0.3)
        return (await client.get("/features/status")).json()

    status = in_process(create_app(settings, link), scenario)
    assert status["loop"] is loop
    assert bool(link.published) is some_published and (status["sent"] > 0) is some_published


# --- POST /labels -------------------------------------------------------------------------


def test_labels_are_published_to_y_true_each_under_its_id_and_counted_once_confirmed(settings: Settings) -> None:
    link = StandInLink()
    labels: list[dict[str, Any]] = [
        {"id": "order-17", "y_true": 151.0}, {"id": "1669147134.196809", "y_true": 75}, {"id": "a:b_c.d-e", "y_true": -2.5}
    ]  # fmt: skip

    answer = in_process(create_app(settings, link), post("/labels", {"labels": labels}))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 3}
    published = [LabelMessage.model_validate_json(m.body) for m in link.to("t.y_true")]
    assert [(m.id, m.body) for m in published] == [(label["id"], float(label["y_true"])) for label in labels]
    assert [m.sample_id for m in link.to("t.y_true")] == [label["id"] for label in labels]
    assert all(m.ts is not None for m in published) and link.to("t.features") == []
    assert all(m.expiration_ms is None for m in link.published)  # the caller's labels are never delayed


@pytest.mark.parametrize(
    ("label", "where", "says"),
    [
        ({"id": "has space", "y_true": 1.0}, ["body", "labels", 1, "id"], "' '"),
        ({"id": "a,b", "y_true": 1.0}, ["body", "labels", 1, "id"], "','"),
        ({"id": "x" * 65, "y_true": 1.0}, ["body", "labels", 1, "id"], "65 characters"),
        ({"id": "", "y_true": 1.0}, ["body", "labels", 1, "id"], "empty"),
        ({"id": "ok-2", "y_true": "151.0"}, ["body", "labels", 1, "y_true"], ""),
        ({"id": "ok-2", "y_true": None}, ["body", "labels", 1, "y_true"], ""),
        ({"id": "ok-2"}, ["body", "labels", 1, "y_true"], ""),
        ({"y_true": 1.0}, ["body", "labels", 1, "id"], ""),
    ],
    ids=["space", "comma", "too-long", "empty-id", "string-label", "null-label", "no-label", "no-id"],
)
def test_a_bad_label_is_a_422_naming_it_and_nothing_is_published(
    settings: Settings, label: dict[str, Any], where: list[Any], says: str
) -> None:
    link = StandInLink()
    answer = in_process(create_app(settings, link), post("/labels", {"labels": [{"id": "ok-1", "y_true": 1.0}, label]}))
    assert answer.status_code == 422, answer.text
    messages = [error["msg"] for error in answer.json()["detail"] if error["loc"][: len(where)] == where]
    assert messages and any(says in message for message in messages), answer.json()
    if where[-1] == "id" and "id" in label:
        assert all(ID_RULE in message for message in messages)  # the rule itself, in the answer
    assert link.published == []


def test_a_non_finite_label_is_refused(settings: Settings) -> None:
    link = StandInLink()

    async def scenario(client: AsyncClient) -> Response:
        body = '{"labels": [{"id": "a", "y_true": NaN}]}'
        return await client.post("/labels", content=body, headers={"content-type": "application/json"})

    answer = in_process(create_app(settings, link), scenario)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][:4] == ["body", "labels", 0, "y_true"]
    assert link.published == []


@pytest.mark.parametrize("count", [0, MAX_ITEMS + 1])
def test_labels_outside_one_to_ten_thousand_are_refused(settings: Settings, count: int) -> None:
    link = StandInLink()
    labels = [{"id": f"id-{n}", "y_true": 1.0} for n in range(count)]
    answer = in_process(create_app(settings, link), post("/labels", {"labels": labels}))
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "labels"]
    assert link.published == []


def test_ten_thousand_labels_in_one_request_are_taken(settings: Settings) -> None:
    link = StandInLink()
    labels = [{"id": f"id-{n}", "y_true": float(n)} for n in range(MAX_ITEMS)]
    answer = in_process(create_app(settings, link), post("/labels", {"labels": labels}))
    assert answer.json() == {"accepted": MAX_ITEMS} and len(link.to("t.y_true")) == MAX_ITEMS


def test_one_id_given_twice_in_a_request_is_refused_naming_it(settings: Settings) -> None:
    link = StandInLink()
    labels = [{"id": "a", "y_true": 1.0}, {"id": "b", "y_true": 2.0}, {"id": "a", "y_true": 3.0}]
    answer = in_process(create_app(settings, link), post("/labels", {"labels": labels}))
    assert answer.status_code == 422 and "given more than once: a" in answer.json()["detail"][0]["msg"]
    assert link.published == []


# --- POST /samples ------------------------------------------------------------------------


def test_samples_go_to_features_with_their_labels_to_y_true_and_ids_made_where_none_given(settings: Settings) -> None:
    link = StandInLink()
    samples: list[dict[str, Any]] = [
        {"id": "mine-1", "features": ROW, "y_true": 151.0},
        {"features": ROW},  # no id, no label yet
        {"id": "mine-3", "features": [0] * 10},
        {"features": ROW, "y_true": 80},
    ]

    async def scenario(client: AsyncClient) -> tuple[Response, Response]:
        return await client.post("/samples", json={"samples": samples}), await client.post("/features/publish", json={"count": 2})

    answer, burst = in_process(create_app(settings, link), scenario)
    assert answer.status_code == 200, answer.text
    ids = answer.json()["ids"]
    assert answer.json()["count"] == 4 and answer.json()["labels"] == 2
    assert ids[0] == "mine-1" and ids[2] == "mine-3"
    for made in (ids[1], ids[3]):
        assert re.fullmatch(r"\d{10}\.\d{6}", made)  # the seed's timestamp format
    assert len(set(ids) | set(burst.json()["ids"])) == 6  # never an id of the demo's
    features = [FeaturesMessage.model_validate_json(m.body) for m in link.to("t.features")][:4]
    assert [(f.id, f.body) for f in features] == [(ids[n], [float(v) for v in s["features"]]) for n, s in enumerate(samples)]
    labels = [LabelMessage.model_validate_json(m.body) for m in link.to("t.y_true")][:2]
    assert [(label.id, label.body) for label in labels] == [("mine-1", 151.0), (ids[3], 80.0)]


@pytest.mark.parametrize(
    ("sample", "where"),
    [
        ({"features": ROW[:9]}, ["body", "samples", 0, "features"]),
        ({"features": [*ROW[:9], "0.1"]}, ["body", "samples", 0, "features", 9]),
        ({"features": dict(zip(DIABETES_NAMES[:9], ROW, strict=False))}, ["body", "samples", 0, "features", "s6"]),
        ({"features": {**dict(zip(DIABETES_NAMES, ROW, strict=True)), "bmx": 1.0}}, ["body", "samples", 0, "features", "bmx"]),
        ({"features": ROW, "id": "new line\n"}, ["body", "samples", 0, "id"]),
        ({"features": ROW, "y_true": True}, ["body", "samples", 0, "y_true"]),
        ({"id": "x"}, ["body", "samples", 0, "features"]),
    ],
)
def test_a_bad_sample_is_a_422_naming_it_and_nothing_is_published(
    settings: Settings, sample: dict[str, Any], where: list[Any]
) -> None:
    link = StandInLink()
    answer = in_process(create_app(settings, link), post("/samples", {"samples": [sample]}))
    assert answer.status_code == 422, answer.text
    assert any(error["loc"][: len(where)] == where for error in answer.json()["detail"]), answer.json()
    assert link.published == []


# --- LABEL_DELAY_S ------------------------------------------------------------------------


def test_with_a_fixed_label_delay_the_demo_labels_wait_in_one_delay_queue_that_long(tmp_path: Path) -> None:
    settings = Settings(QUEUE_PREFIX="t.", FEATURES_INTERVAL_S=3600, LABEL_DELAY_S="8", LOGS_DIR=tmp_path)
    link = StandInLink()

    async def scenario(client: AsyncClient) -> tuple[Response, Response]:
        burst = await client.post("/features/publish", json={"count": 5})
        return burst, await client.post("/labels", json={"labels": [{"id": "own", "y_true": 1.0}]})

    burst, _ = in_process(create_app(settings, link), scenario)
    delayed = link.to("t.y_true.delay.8000ms")
    assert [m.sample_id for m in delayed] == burst.json()["ids"]
    assert {m.expiration_ms for m in delayed} == {8000}
    assert [m.sample_id for m in link.to("t.y_true")] == ["own"]  # only the caller's label goes straight in
    assert len(link.to("t.features")) == 5


def test_with_a_delay_distribution_each_label_waits_in_the_queue_of_its_bucket(tmp_path: Path) -> None:
    settings = Settings(QUEUE_PREFIX="t.", FEATURES_INTERVAL_S=3600, FEATURES_SEED=3, LABEL_DELAY_S="exp:30", LOGS_DIR=tmp_path)
    link = StandInLink()

    async def two_bursts(client: AsyncClient) -> None:  # 2,000 samples: two requests of the most one may ask
        for _ in range(2):
            assert (await client.post("/features/publish", json={"count": MAX_BURST})).status_code == 200

    in_process(create_app(settings, link), two_bursts)
    labels = [m for m in link.published if m.queue != "t.features"]
    assert len(labels) == 2000 and all(m.queue.startswith("t.y_true.delay.") for m in labels)
    delays = [m.expiration_ms / 1000 for m in labels if m.expiration_ms is not None]
    assert sum(delays) / len(delays) == pytest.approx(30, rel=0.1)  # an exponential of mean 30 s
    for message, delay in zip(labels, delays, strict=True):
        start_ms = int(message.queue.removeprefix("t.y_true.delay.").removesuffix("ms"))
        # Its queue holds delays from its start to the next bucket's: a label waits at most that much more.
        assert start_ms / 1000 <= delay + 1e-3 and (start_ms == 0 or delay < start_ms / 1000 * BUCKET_RATIO + 1e-3)
    declared_buckets = {f"t.y_true.delay.{round(bucket_start_s(b) * 1000)}ms" for b in LabelDelay.parse("exp:30").buckets()}
    assert {m.queue for m in labels} <= declared_buckets


# --- scenarios ----------------------------------------------------------------------------


def test_a_scenario_changes_what_is_sent_until_it_is_deleted(settings: Settings) -> None:
    link = StandInLink()
    bmi = DIABETES_NAMES.index("bmi")
    data = load_diabetes().data

    async def scenario(client: AsyncClient) -> list[Response]:
        return [
            await client.post("/features/scenario", json={"shift": {"bmi": 3.0}, "noise": 0}),
            await client.get("/features/scenario"),
            await client.post("/features/publish", json={"count": 30}),
            await client.delete("/features/scenario"),
            await client.post("/features/publish", json={"count": 30}),
        ]

    set_, shown, _, deleted, _ = in_process(create_app(settings, link), scenario)
    assert set_.status_code == 200 and set_.json() == shown.json()
    assert shown.json()["active"] is True and shown.json()["shift"] == {"bmi": 3.0}
    assert shown.json()["noise"] == dict.fromkeys(DIABETES_NAMES, 0.0) and shown.json()["since"] is not None
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
        (
            {"shift": {"bmx": 1.0}},
            ["body", "shift", "bmx"],
            "the schema's 10 features are age, sex, bmi, bp, s1, s2, s3, s4, s5, s6",
        ),
        ({"noise": {"BMI": 1.0}}, ["body", "noise", "BMI"], "the schema's 10 features are age, sex, bmi"),
        ({"scale": {"bmi": 11}}, ["body", "scale", "bmi"], "between 0 and 10"),
        ({"shift": {"bmi": "x"}}, ["body", "shift", "bmi"], "number"),
        ({"drift": {"bmi": 1}}, ["body", "drift"], "Extra inputs"),
    ],
)
def test_a_bad_scenario_is_a_422_naming_the_problem_and_changes_nothing(
    settings: Settings, body: dict, where: list, says: str
) -> None:
    async def scenario(client: AsyncClient) -> tuple[Response, Response]:
        return await client.post("/features/scenario", json=body), await client.get("/features/scenario")

    refused, shown = in_process(create_app(settings, StandInLink()), scenario)
    assert refused.status_code == 422
    errors = refused.json()["detail"]
    assert any(e["loc"][: len(where)] == where and says in e["msg"] for e in errors), errors
    assert shown.json()["active"] is False
