"""model_api's app in process, its broker link a stand-in: /predict, /model/info, /health, and the
batch handler behind the features queue fed in-memory deliveries (the real broker runs the same
path in tests/integration/test_model_api.py)."""

import asyncio
import json
import pickle
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from httpx import AsyncClient, Response
from sklearn.datasets import load_diabetes

from services.common.amqp.consumer import Delivery
from services.common.messages import ID_RULE, FeaturesMessage, PredictionMessage
from services.common.settings import Settings, get_settings
from services.model_api.app import create_app
from services.model_api.drift import REASSESS_S
from services.model_api.service import ModelService
from tests.unit.in_process import in_process
from tests.unit.stand_in_link import StandInLink

ROWS = load_diabetes().data[:3].tolist()


@pytest.fixture
def settings(model_path: Path) -> Settings:
    return Settings(MODEL_PATH=model_path, QUEUE_PREFIX="t.")


def expected(model_path: Path, rows: list[list[float]]) -> list[float]:
    """What the pickled model itself predicts (read outside the service)."""
    with model_path.open("rb") as f:
        model = pickle.load(f)  # noqa: S301 - the test's own freshly trained file
    return [float(v) for v in model.predict(np.asarray(rows))]


def test_predict_answers_what_the_model_predicts_for_one_row_and_a_batch(settings: Settings) -> None:
    async def scenario(client: AsyncClient) -> tuple[Response, Response]:
        return await client.post("/predict", json={"features": ROWS[0]}), await client.post("/predict", json={"instances": ROWS})

    one, batch = in_process(create_app(settings, StandInLink()), scenario)
    version = json.loads(Path(f"{settings.MODEL_PATH}.json").read_text())["sha256"][:12]
    assert one.json()["model_version"] == version
    assert one.json()["prediction"] == pytest.approx(expected(settings.MODEL_PATH, ROWS[:1])[0], rel=1e-12)
    assert batch.json()["predictions"] == pytest.approx(expected(settings.MODEL_PATH, ROWS), rel=1e-12)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"features": ROWS[0][:9]}, ["body", "features"]),
        ({"features": [*ROWS[0][:9], "0.1"]}, ["body", "features", 9]),
        ({"features": [*ROWS[0][:9], True]}, ["body", "features", 9]),
        ({"features": [*ROWS[0][:9], 1e13]}, ["body", "features", 9]),
        ({"features": {"age": 0.1}}, ["body", "features", "sex"]),
        ({"instances": []}, ["body", "instances"]),
        ({"features": ROWS[0], "instances": ROWS}, ["body"]),
        ({}, ["body"]),
    ],
)
def test_a_bad_body_is_a_422_saying_where(settings: Settings, body: dict[str, Any], where: list[Any]) -> None:
    link = StandInLink()

    async def scenario(client: AsyncClient) -> Response:
        return await client.post("/predict", json=body)

    answer = in_process(create_app(settings, link), scenario)
    assert answer.status_code == 422, answer.text
    assert any(error["loc"][: len(where)] == where for error in answer.json()["detail"]), answer.json()


def test_model_info_names_the_file_its_hash_and_what_it_served(settings: Settings) -> None:
    async def scenario(client: AsyncClient) -> Response:
        await client.post("/predict", json={"instances": ROWS})
        return await client.get("/model/info")

    info = in_process(create_app(settings, StandInLink()), scenario).json()
    sidecar = json.loads(Path(f"{settings.MODEL_PATH}.json").read_text())
    assert info["sha256"] == sidecar["sha256"] and info["model_version"] == sidecar["sha256"][:12]
    assert info["model_path"] == str(settings.MODEL_PATH) and info["verified"] is True
    assert info["predictions_by_version"] == {info["model_version"]: {"http": 3}}


def test_health_follows_the_broker_link(settings: Settings) -> None:
    async def scenario(client: AsyncClient) -> Response:
        return await client.get("/health")

    assert in_process(create_app(settings, StandInLink()), scenario).status_code == 200
    down = in_process(create_app(settings, StandInLink(problem="connecting to RabbitMQ at localhost:5672")), scenario)
    assert down.status_code == 503 and down.json()["reason"] == "connecting to RabbitMQ at localhost:5672"


class Raw:
    """The broker side of a delivery, as far as the handler looks."""

    redelivered = False


def deliveries(rows: list[list[float]]) -> list[Delivery[FeaturesMessage]]:
    return [
        # The arg-type ignore below: Raw stands in for aiormq's DeliveredMessage; the handler reads only .redelivered
        Delivery(FeaturesMessage(id=f"1700000000.{n:06d}", body=row, ts=1700000000.5), Raw(), "t.features", 0.0)  # type: ignore[arg-type]
        for n, row in enumerate(rows, start=1)
    ]


def test_a_batch_from_the_queue_is_predicted_and_published_to_y_pred_with_id_ts_and_version(settings: Settings) -> None:
    link = StandInLink()
    service = ModelService(settings, link)
    batch = deliveries(ROWS)
    refused = asyncio.run(service._predict_batch(batch))
    assert refused == []
    published = [PredictionMessage.model_validate_json(m.body) for m in link.to("t.y_pred")]
    assert [p.id for p in published] == [d.message.id for d in batch]
    assert [p.body for p in published] == pytest.approx(expected(settings.MODEL_PATH, ROWS), rel=1e-12)
    assert {p.model_version for p in published} == {service.model.version} and {p.ts for p in published} == {1700000000.5}


def test_a_row_the_model_predicts_no_finite_number_for_is_refused_alone(settings: Settings) -> None:
    link = StandInLink()
    service = ModelService(settings, link)
    batch = deliveries([ROWS[0], ROWS[1], ROWS[2]])
    # Features validated before the queues bounded them (FEATURE_ABS_MAX): the model's arithmetic overflows.
    batch[1].message = FeaturesMessage.model_construct(id=batch[1].message.id, body=[1.7e308] * 10, ts=None)
    refused = asyncio.run(service._predict_batch(batch))
    assert [(delivery.message.id, "not a finite number" in reason) for delivery, reason in refused] == [
        ("1700000000.000002", True)
    ]
    assert [m.sample_id for m in link.to("t.y_pred")] == ["1700000000.000001", "1700000000.000003"]


@pytest.fixture
def small_target_bound(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """TARGET_ABS_MAX of 100: the diabetes model predicts beyond it for some rows (its targets reach 346)."""
    monkeypatch.setenv("TARGET_ABS_MAX", "100")
    get_settings.cache_clear()
    yield 100.0
    get_settings.cache_clear()


def test_a_prediction_beyond_target_abs_max_is_refused_on_the_queue_and_over_http(
    settings: Settings, small_target_bound: float
) -> None:
    predicted = expected(settings.MODEL_PATH, ROWS)
    beyond = [abs(value) > small_target_bound for value in predicted]
    assert any(beyond) and not all(beyond), predicted  # the rows straddle the bound
    link = StandInLink()
    refused = asyncio.run(ModelService(settings, link)._predict_batch(deliveries(ROWS)))
    assert sorted(delivery.message.id for delivery, _ in refused) == [
        f"1700000000.{n:06d}" for n, out in enumerate(beyond, start=1) if out
    ]
    assert all("TARGET_ABS_MAX" in reason for _, reason in refused)
    assert len(link.to("t.y_pred")) == beyond.count(False)

    async def scenario(client: AsyncClient) -> Response:
        return await client.post("/predict", json={"instances": ROWS})

    answer = in_process(create_app(settings, StandInLink()), scenario)
    assert answer.status_code == 422
    assert [error["loc"][-1] for error in answer.json()["detail"]] == [i for i, out in enumerate(beyond) if out]


# --- monitored predictions over HTTP -------------------------------------------------------


def test_a_prediction_served_over_http_is_published_to_y_pred_under_the_callers_id(settings: Settings) -> None:
    link = StandInLink()

    async def scenario(client: AsyncClient) -> tuple[Response, Response]:
        one = await client.post("/predict", json={"id": "order-17", "features": ROWS[0]})
        batch = await client.post("/predict", json={"ids": ["b-1", "b-2", "b-3"], "instances": ROWS})
        return one, batch

    one, batch = in_process(create_app(settings, link), scenario)
    assert one.status_code == 200, one.text
    assert one.json()["id"] == "order-17" and one.json()["monitored"] is True
    assert batch.json()["ids"] == ["b-1", "b-2", "b-3"] and batch.json()["monitored"] is True
    published = [PredictionMessage.model_validate_json(m.body) for m in link.to("t.y_pred")]
    assert [(p.id, p.body) for p in published] == [
        ("order-17", one.json()["prediction"]),
        *zip(batch.json()["ids"], batch.json()["predictions"], strict=True),
    ]
    assert {p.model_version for p in published} == {one.json()["model_version"]}
    assert all(p.ts is not None for p in published)
    assert [m.sample_id for m in link.to("t.y_pred")] == ["order-17", "b-1", "b-2", "b-3"]


def test_without_ids_each_prediction_gets_a_unique_timestamp_id_that_no_features_id_can_equal(settings: Settings) -> None:
    link = StandInLink()

    async def scenario(client: AsyncClient) -> list[Response]:
        return [
            await client.post("/predict", json={"features": ROWS[0]}),
            await client.post("/predict", json={"instances": ROWS}),
            await client.post("/predict", json={"features": ROWS[1]}),
        ]

    answers = in_process(create_app(settings, link), scenario)
    ids = [answers[0].json()["id"], *answers[1].json()["ids"], answers[2].json()["id"]]
    assert len(set(ids)) == 5 and ids == sorted(ids)
    for made in ids:
        # The time served to the microsecond (the seed's format), then six digits of this process:
        # longer than the features service's ids, so never one of them.
        assert re.fullmatch(r"\d{10}\.\d{6}\d{6}", made), made
        assert abs(float(made) - time.time()) < 60
    assert len({made[-6:] for made in ids}) == 1
    assert [m.sample_id for m in link.to("t.y_pred")] == ids


def test_with_monitoring_off_nothing_is_published_and_the_answer_says_so(model_path: Path) -> None:
    link = StandInLink(problem="RabbitMQ at localhost:5672 is not reachable")
    settings = Settings(MODEL_PATH=model_path, QUEUE_PREFIX="t.", MONITOR_HTTP_PREDICTIONS=False)

    async def scenario(client: AsyncClient) -> Response:
        return await client.post("/predict", json={"id": "x", "features": ROWS[0]})

    answer = in_process(create_app(settings, link), scenario)
    assert answer.status_code == 200 and answer.json()["monitored"] is False and answer.json()["id"] == "x"
    assert link.published == []


def test_with_monitoring_on_and_no_broker_nothing_is_served(settings: Settings) -> None:
    link = StandInLink(problem="RabbitMQ at localhost:5672 is not reachable")

    async def scenario(client: AsyncClient) -> Response:
        return await client.post("/predict", json={"features": ROWS[0]})

    answer = in_process(create_app(settings, link), scenario)
    assert answer.status_code == 503 and link.down_because in answer.json()["detail"]
    assert link.published == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"id": "has space", "features": ROWS[0]}, ID_RULE),
        ({"id": "x" * 65, "features": ROWS[0]}, "65 characters"),
        ({"id": "a", "instances": ROWS}, '"id" goes with "features"'),
        ({"ids": ["a"], "features": ROWS[0]}, '"ids" goes with "instances"'),
        ({"ids": ["a", "b"], "instances": ROWS}, '"ids" has 2 ids for 3 instances'),
        ({"ids": ["a", "b", "a"], "instances": ROWS}, "given more than once: a"),
        ({"ids": ["a", "b,c", "d"], "instances": ROWS}, ID_RULE),
    ],
)
def test_a_bad_id_is_a_422_saying_what_is_wrong_and_nothing_is_published(
    settings: Settings, body: dict[str, Any], says: str
) -> None:
    link = StandInLink()

    async def scenario(client: AsyncClient) -> Response:
        return await client.post("/predict", json=body)

    answer = in_process(create_app(settings, link), scenario)
    assert answer.status_code == 422, answer.text
    assert any(says in error["msg"] for error in answer.json()["detail"]), answer.json()
    assert link.published == []


def test_drift_sees_what_predict_served_and_names_the_ten_features(settings: Settings) -> None:
    rows = load_diabetes().data[:40].tolist()

    async def scenario(client: AsyncClient) -> dict[str, Any]:
        await client.post("/predict", json={"instances": rows[:39]})
        await client.post("/predict", json={"features": rows[39]})
        # A window that changed is assessed again REASSESS_S after the last assessment (the watch's, at start).
        await asyncio.sleep(REASSESS_S)
        return cast(dict[str, Any], (await client.get("/drift")).json())

    drift = in_process(create_app(settings, StandInLink()), scenario)
    assert drift["window"]["count"] == 40 and drift["window"]["seen"] == 40
    assert list(drift["features"]) == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert drift["status"] in ("calm", "drifted") and drift["rule"]["decides"] == "ks"
    assert drift["prediction"]["window"]["mean"] == pytest.approx(np.mean(expected(settings.MODEL_PATH, rows)))
    assert drift["features"]["bmi"]["window"]["mean"] == pytest.approx(np.mean([r[2] for r in rows]))
    sidecar = json.loads(Path(f"{settings.MODEL_PATH}.json").read_text())
    assert drift["reference"]["sha256"] == sidecar["reference"]["sha256"] and drift["reference"]["rows"] == 442
    assert drift["model_version"] == sidecar["sha256"][:12]


def test_drift_sees_what_the_queue_path_predicted(settings: Settings) -> None:
    service = ModelService(settings, StandInLink())
    rows = load_diabetes().data[:14].tolist()
    asyncio.run(service._predict_batch(deliveries(rows)))
    drift = service.drift.report(time.time())
    assert drift["window"]["count"] == 14
    assert drift["prediction"]["window"]["mean"] == pytest.approx(np.mean(expected(settings.MODEL_PATH, rows)))


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b'{"features": [NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]}', "non_finite"),
        (b'{"instances": [[0, 0, 0, 0, 0, 0, 0, 0, 0, Infinity]]}', "non_finite"),
        # null is a missing value, taken; the demo's linear model cannot predict with one, and says so
        (b'{"features": [null, 0, 0, 0, 0, 0, 0, 0, 0, 0]}', "unpredictable"),
        (b'{"features": [0, 0, 0, 0, 0, 0, 0, 0, 0]}', "feature_count"),
        (b'{"instances": [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', "feature_count"),
        (b'{"features": {"age": 0}}', "missing_feature"),
        (b'{"features": [0, 0, "0", 0, 0, 0, 0, 0, 0, 0]}', "wrong_type"),
        (b'{"instances": []}', "other"),
        (b'{"features": [1.7e308, 1.7e308, 1.7e308, 1.7e308, 1.7e308, 1e5, 1e5, 1e5, 1e5, 1e5]}', "out_of_range"),
    ],
)
def test_a_refused_predict_body_is_counted_by_reason_in_drift(settings: Settings, body: bytes, kind: str) -> None:
    async def scenario(client: AsyncClient) -> tuple[Response, dict[str, Any]]:
        answer = await client.post("/predict", content=body, headers={"content-type": "application/json"})
        return answer, (await client.get("/drift")).json()

    answer, drift = in_process(create_app(settings, StandInLink()), scenario)
    assert answer.status_code == 422
    assert {k: v for k, v in drift["refused"]["http"].items() if v} == {kind: 1}
    assert drift["window"]["count"] == 0  # nothing refused reaches the window


def test_a_row_the_model_cannot_predict_is_counted_as_unpredictable(settings: Settings) -> None:
    service = ModelService(settings, StandInLink())
    batch = deliveries([ROWS[0], ROWS[1]])
    # Features validated before the queues bounded them (FEATURE_ABS_MAX): the model's arithmetic overflows.
    batch[1].message = FeaturesMessage.model_construct(id=batch[1].message.id, body=[1.7e308] * 10, ts=None)
    asyncio.run(service._predict_batch(batch))
    assert service.drift.refused["queue"]["unpredictable"] == 1 and service.drift.monitor.window.count == 1


def test_a_model_without_a_reference_serves_and_says_drift_is_unavailable(tmp_path: Path, model_path: Path) -> None:
    own = tmp_path / "old.pkl"
    own.write_bytes(model_path.read_bytes())
    sidecar = json.loads(Path(f"{model_path}.json").read_text())
    del sidecar["reference"]  # as a model trained before drift existed
    Path(f"{own}.json").write_text(json.dumps(sidecar))

    async def scenario(client: AsyncClient) -> tuple[Response, dict[str, Any]]:
        return await client.post("/predict", json={"features": ROWS[0]}), (await client.get("/drift")).json()

    answer, drift = in_process(create_app(Settings(MODEL_PATH=own), StandInLink()), scenario)
    assert answer.status_code == 200
    assert drift["status"] == "unavailable" and "names no reference" in drift["reason"]
    assert list(drift["features"]) == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert drift["reference"] is None and drift["window"]["count"] == 1


def test_a_reload_to_another_model_starts_its_drift_window_anew(tmp_path: Path) -> None:
    from services.model_api.train import train

    path = tmp_path / "serving.pkl"
    train(path)
    service = ModelService(Settings(MODEL_PATH=path), StandInLink())
    asyncio.run(service._predict_batch(deliveries(ROWS)))
    assert service.drift.report(time.time())["window"]["count"] == 3
    first = service.model.version
    train(path, model="ridge")  # another model, with its own reference

    async def reload() -> None:
        await service.reload()

    asyncio.run(reload())
    drift = service.drift.report(time.time())
    assert service.model.version != first and drift["model_version"] == service.model.version
    assert drift["window"]["count"] == 0  # its predictions are another model's: not mixed with the old
    assert drift["reference"]["sha256"] == json.loads(Path(f"{path}.json").read_text())["reference"]["sha256"]
