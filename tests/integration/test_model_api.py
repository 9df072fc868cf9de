"""model_api alone, as a real process on the real broker: HTTP inference, its inputs, reload."""

import asyncio
import contextlib
import json
import math
import pickle
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from harness.processes import ServiceProcess, free_port, run_to_exit, service_env, stop_all, wait_until
from harness.queues import delete_queues, unique_prefix
from services.common.messages import PredictionMessage
from services.common.schema import DIABETES_NAMES
from services.model_api.modelstore import save_model
from services.model_api.train import train

pytestmark = [pytest.mark.broker, pytest.mark.slow]

BATCH_LIMIT = 1000  # the documented limit (docs/own-model.md) of "instances"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A linear and a random-forest model file, each with its sidecar."""
    folder = tmp_path_factory.mktemp("models")
    return {kind: _trained(folder / f"{kind}.pkl", kind) for kind in ("linear", "random_forest")}


def _trained(path: Path, kind: str) -> Path:
    train(path, model=kind)
    return path


def install(source: Path, target: Path) -> str:
    """Put a model file and its sidecar at ``target`` (as a user would copy them); its version."""
    shutil.copyfile(source, target)
    shutil.copyfile(f"{source}.json", f"{target}.json")
    return json.loads(Path(f"{source}.json").read_text())["sha256"][:12]


@contextlib.contextmanager
def model_api(work_dir: Path, model_path: Path, amqp_url: str, **settings: str) -> Iterator[ServiceProcess]:
    prefix = unique_prefix()
    env = service_env(AMQP_URL=amqp_url, QUEUE_PREFIX=prefix, MODEL_PATH=str(model_path), MODEL_PORT=str(free_port()), **settings)
    service = ServiceProcess("model_api", env, work_dir).start()
    try:
        service.wait_healthy()
        yield service
    finally:
        try:
            stop_all([service])
        finally:
            delete_queues(amqp_url, prefix)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path], amqp_url: str) -> Iterator[ServiceProcess]:
    """model_api serving the linear model; no test of this module swaps it."""
    work_dir = tmp_path_factory.mktemp("model_api")
    install(models["linear"], work_dir / "serving.pkl")
    # Features within ±10⁶ (not 10¹²): the demo's linear model then predicts within TARGET_ABS_MAX for every
    # row the schema allows, so that schemathesis' valid rows are all served (beyond, a 422 says why).
    with model_api(work_dir, work_dir / "serving.pkl", amqp_url, FEATURE_ABS_MAX="1e6") as service:
        yield service


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return load_diabetes(return_X_y=True)[0]


async def drain(amqp_url: str, queue: str) -> dict[str, PredictionMessage]:
    """Every message ready in ``queue``, taken off it, by id."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        source = await channel.declare_queue(queue, passive=True)
        found = {}
        while (message := await source.get(fail=False)) is not None:
            prediction = PredictionMessage.model_validate_json(message.body)
            found[prediction.id] = prediction
            await message.ack()
        return found


def unpickled(path: Path) -> Any:
    return pickle.loads(path.read_bytes())  # noqa: S301 - the test's own file


def test_predict_one_row_and_a_batch_answer_as_the_model_does(
    serving: ServiceProcess, models: dict[str, Path], rows: np.ndarray
) -> None:
    expected = unpickled(models["linear"]).predict(rows[:40])
    version = json.loads(Path(f"{models['linear']}.json").read_text())["sha256"][:12]

    one = httpx.post(f"{serving.url}/predict", json={"features": rows[3].tolist()})
    assert one.status_code == 200, one.text
    assert one.json() == {
        "id": one.json()["id"], "prediction": pytest.approx(expected[3], rel=1e-12), "model_version": version, "monitored": True
    }  # fmt: skip

    batch = httpx.post(f"{serving.url}/predict", json={"instances": rows[:40].tolist()})
    assert batch.status_code == 200, batch.text
    assert batch.json()["model_version"] == version
    np.testing.assert_allclose(batch.json()["predictions"], expected, rtol=1e-12)
    assert batch.json()["predictions"][3] == one.json()["prediction"]

    # Each prediction served was published to y_pred under its id, confirmed before the answer.
    published = asyncio.run(drain(serving.env["AMQP_URL"], serving.env["QUEUE_PREFIX"] + "y_pred"))
    served = {
        one.json()["id"]: one.json()["prediction"],
        **dict(zip(batch.json()["ids"], batch.json()["predictions"], strict=True)),
    }
    assert {sample_id: published[sample_id].body for sample_id in served} == served
    assert {published[sample_id].model_version for sample_id in served} == {version}

    limit = httpx.post(f"{serving.url}/predict", json={"instances": [rows[0].tolist()] * BATCH_LIMIT})
    assert limit.status_code == 200 and len(limit.json()["predictions"]) == BATCH_LIMIT


ROW = [0.01] * 10


@pytest.mark.parametrize(
    ("body", "where", "what"),
    [
        ({"features": ROW[:9]}, ["body", "features"], "holds 10 values in schema order, not 9"),
        ({"features": [*ROW, 0.0]}, ["body", "features"], "holds 10 values in schema order, not 11"),
        ({"features": dict(zip(DIABETES_NAMES[1:], ROW, strict=False))}, ["body", "features", "age"], "feature 'age' is missing"),
        ({"features": ["a", *ROW[1:]]}, ["body", "features", 0], "number"),
        ({"features": [*ROW[:4], True, *ROW[5:]]}, ["body", "features", 4], "number"),
        ({"features": [*ROW[:2], "0.5", *ROW[3:]]}, ["body", "features", 2], "number"),
        # null is a missing value, taken: the demo's linear model cannot predict with it, and says so
        ({"features": [*ROW[:9], None]}, ["body", "features"], "Input X contains NaN"),
        ('{"features": [NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]}', ["body", "features", 0], "finite"),
        ('{"features": [0, 0, 0, 0, 0, 0, 0, 0, 0, Infinity]}', ["body", "features", 9], "finite"),
        (
            '{"instances": [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, -Infinity, 0, 0, 0, 0, 0, 0]]}',
            ["body", "instances", 1, 3],
            "finite",
        ),
        ({"instances": []}, ["body", "instances"], "at least 1"),
        ({"instances": [ROW] * (BATCH_LIMIT + 1)}, ["body", "instances"], f"at most {BATCH_LIMIT}"),
        ({"instances": [ROW, ROW[:3]]}, ["body", "instances", 1], "holds 10 values in schema order, not 3"),
        ({"instances": ROW}, ["body", "instances", 0], "list"),
        ({}, ["body"], "neither"),
        ({"features": None}, ["body", "features"], "an object by name or a list in schema order, not null"),
        ({"features": ROW, "instances": [ROW]}, ["body"], "both"),
        ([ROW], ["body"], "object"),
    ],
    ids=[
        "9 features",
        "11 features",
        "a feature missing by name",
        "a string",
        "a boolean",
        "a numeric string",
        "null",
        "NaN",
        "Infinity",
        "-Infinity in a batch",
        "empty batch",
        "oversize batch",
        "short row in a batch",
        "a row as the batch",
        "neither form",
        "null features",
        "both forms",
        "not an object",
    ],
)
def test_a_bad_body_is_refused_saying_where_and_what(
    serving: ServiceProcess, body: dict[str, Any] | str, where: list[str | int], what: str
) -> None:
    if isinstance(body, str):
        answer = httpx.post(f"{serving.url}/predict", content=body, headers={"content-type": "application/json"})
    else:
        answer = httpx.post(f"{serving.url}/predict", json=body)
    assert answer.status_code == 422, answer.text
    errors = answer.json()["detail"]
    assert any(e["loc"][: len(where)] == where and what in e["msg"] for e in errors), errors


def test_model_info_says_what_is_loaded_and_how_much_it_served(serving: ServiceProcess, models: dict[str, Path]) -> None:
    sidecar = json.loads(Path(f"{models['linear']}.json").read_text())
    before = httpx.get(f"{serving.url}/model/info").json()
    assert httpx.post(f"{serving.url}/predict", json={"instances": [ROW] * 7}).status_code == 200
    info = httpx.get(f"{serving.url}/model/info").json()

    for key in ("model_type", "params", "sklearn_version", "feature_names", "trained_at", "sha256", "metrics", "target_mean"):
        assert info[key] == sidecar[key], key
    assert info["model_version"] == sidecar["sha256"][:12]
    assert info["verified"] is True and info["warnings"] == []
    assert info["loaded_at"] and info["load_seconds"] >= 0
    assert info["predictions_served"] == before["predictions_served"] + 7
    assert info["predictions_by_version"][info["model_version"]]["http"] == before["predictions_served"] + 7


def test_the_queue_path_predicts_what_predict_answers(serving: ServiceProcess, rows: np.ndarray, amqp_url: str) -> None:
    """The same model, the same row, the same number, up to the last bit or two: BLAS sums a
    row's products in an order that depends on the batch it is in (measured: ≤ 2.5e-16 relative)."""
    prefix = serving.env["QUEUE_PREFIX"]
    ids = [f"1700000000.{i:06d}" for i in range(60)]
    sent = {sample_id: rows[i * 7 % len(rows)].tolist() for i, sample_id in enumerate(ids)}

    async def through_the_queues() -> dict[str, dict]:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            predictions = await channel.declare_queue(f"{prefix}y_pred", passive=True)
            for sample_id, features in sent.items():
                body = json.dumps({"id": sample_id, "body": features, "ts": 1.0}).encode()
                await channel.default_exchange.publish(aio_pika.Message(body), routing_key=f"{prefix}features")
            received: dict[str, dict] = {}
            async with asyncio.timeout(30):
                async with predictions.iterator() as messages:
                    async for message in messages:
                        await message.ack()
                        payload = json.loads(message.body)
                        received[payload["id"]] = payload  # and the /predict calls of other tests, also monitored
                        if set(sent) <= received.keys():
                            break
            return received

    received = {sample_id: queued for sample_id, queued in asyncio.run(through_the_queues()).items() if sample_id in sent}
    assert set(received) == set(ids)
    version = httpx.get(f"{serving.url}/model/info").json()["model_version"]
    one_by_one = {
        sample_id: httpx.post(f"{serving.url}/predict", json={"features": features}).json()["prediction"]
        for sample_id, features in sent.items()
    }
    as_batch = httpx.post(f"{serving.url}/predict", json={"instances": list(sent.values())}).json()["predictions"]
    for (sample_id, queued), batched in zip(sorted(received.items()), as_batch, strict=True):
        assert queued["model_version"] == version
        assert math.isclose(queued["body"], one_by_one[sample_id], rel_tol=1e-12), sample_id
        assert math.isclose(queued["body"], batched, rel_tol=1e-12), sample_id


def ids_as_many_as_instances(case: Case) -> bool:
    """/predict's ``ids`` must have one id per row of ``instances``: JSON Schema cannot say so (the
    description does), so a request the schema allows may still be refused for it. Such are left out."""
    body = case.body
    if not isinstance(body, dict):
        return True
    ids, instances = body.get("ids"), body.get("instances")
    return not (isinstance(ids, list) and isinstance(instances, list)) or len(ids) == len(instances)


def each_reported_id_once(case: Case) -> bool:
    """/predictions takes each id once a request: JSON Schema cannot say that of one field of the items
    (its description does), so a request the schema allows may still be refused for it. Such are left out."""
    body = case.body
    items = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return True
    ids = [item.get("id") for item in items if isinstance(item, dict)]
    return len(ids) == len(set(map(str, ids)))


def no_missing_values_for_the_demo_model(case: Case) -> Case:
    """The schema allows null for any feature (a missing value is taken, and counted); whether the model
    predicts with one is the model's business, and the demo's linear model does not: it is a 422 naming
    the model's reason (tested above). In the positive run a null feature becomes 0.0, still a request
    the schema allows (a filter would throw away nearly every case: ten features, each null half the time)."""
    body = case.body
    if not isinstance(body, dict):
        return case
    given = [body["features"]] if "features" in body else body.get("instances")
    for row in given if isinstance(given, list) else []:
        if isinstance(row, dict):
            row.update({name: 0.0 for name, value in row.items() if value is None})
        elif isinstance(row, list):
            row[:] = [0.0 if value is None else value for value in row]
    return case


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_request_the_schema_allows_or_forbids_makes_a_server_error(serving: ServiceProcess, mode: GenerationMode) -> None:
    """schemathesis, over model_api's own OpenAPI schema: every route, valid and invalid requests,
    checked for 5xx and for answers that disagree with the schema."""
    schema = schemathesis.openapi.from_url(f"{serving.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"model_api's schema has an operation schemathesis cannot read: {result!r}"
        operations.append(result.ok())
    assert {op.path for op in operations} >= {"/predict", "/model/info", "/model/reload", "/health"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not len(operation.body):
            continue  # nothing to get wrong in a request without a body or parameters

        strategy = operation.as_strategy(generation_mode=mode).filter(ids_as_many_as_instances).filter(each_reported_id_once)
        if mode is GenerationMode.POSITIVE:
            strategy = strategy.map(no_missing_values_for_the_demo_model)

        # A route without a body (GET /health, POST /model/reload) is the same request each time: a few tries.
        examples = 40 if len(operation.body) else 5

        @given(case=strategy)
        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def answered_by_the_schema(case: Case) -> None:
            case.call_and_validate()

        answered_by_the_schema()


@pytest.fixture
def reloadable(tmp_path: Path, models: dict[str, Path], amqp_url: str) -> Iterator[tuple[ServiceProcess, Path]]:
    """model_api serving a copy of the linear model at a path the test may overwrite."""
    path = tmp_path / "serving.pkl"
    install(models["linear"], path)
    with model_api(tmp_path, path, amqp_url) as service:
        yield service, path


def version_of(service: ServiceProcess) -> str:
    return httpx.get(f"{service.url}/model/info").json()["model_version"]


def test_reload_puts_the_new_file_in_service(
    reloadable: tuple[ServiceProcess, Path], models: dict[str, Path], rows: np.ndarray
) -> None:
    service, path = reloadable
    linear = version_of(service)
    forest = install(models["random_forest"], path)

    answer = httpx.post(f"{service.url}/model/reload")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model_version": forest, "previous_version": linear, "changed": True, "warnings": []}
    info = httpx.get(f"{service.url}/model/info").json()
    assert (info["model_version"], info["model_type"]) == (forest, "RandomForestRegressor")
    predicted = httpx.post(f"{service.url}/predict", json={"instances": rows[:5].tolist()}).json()
    assert predicted["model_version"] == forest
    np.testing.assert_allclose(predicted["predictions"], unpickled(models["random_forest"]).predict(rows[:5]), rtol=1e-12)

    again = httpx.post(f"{service.url}/model/reload").json()
    assert (again["model_version"], again["changed"]) == (forest, False)


def test_a_refused_reload_says_why_and_keeps_the_old_model(
    reloadable: tuple[ServiceProcess, Path], models: dict[str, Path], rows: np.ndarray
) -> None:
    service, path = reloadable
    linear = version_of(service)
    expected = json.loads(Path(f"{path}.json").read_text())["sha256"]
    shutil.copyfile(models["random_forest"], path)  # the file, without its sidecar
    actual = json.loads(Path(f"{models['random_forest']}.json").read_text())["sha256"]

    answer = httpx.post(f"{service.url}/model/reload")
    assert answer.status_code == 409, answer.text
    detail = answer.json()["detail"]
    assert str(path) in detail and expected in detail and actual in detail
    assert "MODEL_ALLOW_UNVERIFIED=1" in detail and "python -m services.model_api.register" in detail
    assert answer.json()["model_version"] == linear

    Path(f"{path}.json").unlink()
    answer = httpx.post(f"{service.url}/model/reload")
    assert answer.status_code == 409 and "has no metadata file" in answer.json()["detail"]

    predicted = httpx.post(f"{service.url}/predict", json={"features": rows[9].tolist()}).json()
    assert predicted["model_version"] == linear
    assert math.isclose(predicted["prediction"], unpickled(models["linear"]).predict(rows[9:10])[0], rel_tol=1e-12)
    assert "model reload refused" in service.output()


def test_sighup_reloads_the_file(reloadable: tuple[ServiceProcess, Path], models: dict[str, Path]) -> None:
    service, path = reloadable
    forest = install(models["random_forest"], path)
    assert service.process is not None
    service.process.send_signal(signal.SIGHUP)
    wait_until(lambda: version_of(service) == forest, 20, "the model to be reloaded after SIGHUP")
    assert service.process.poll() is None


def test_an_unverified_file_is_served_only_when_allowed(tmp_path: Path, models: dict[str, Path], amqp_url: str) -> None:
    path = tmp_path / "bare.pkl"
    shutil.copyfile(models["linear"], path)
    refused = run_to_exit("model_api", service_env(MODEL_PATH=str(path), MODEL_PORT=str(free_port())))
    assert refused.returncode != 0
    assert str(path) in refused.stderr and "MODEL_ALLOW_UNVERIFIED=1" in refused.stderr
    assert "Traceback" not in refused.stderr

    with model_api(tmp_path, path, amqp_url, MODEL_ALLOW_UNVERIFIED="1") as service:
        info = httpx.get(f"{service.url}/model/info").json()
        assert info["verified"] is False
        assert any("MODEL_ALLOW_UNVERIFIED=1" in w for w in info["warnings"])
        assert "UNVERIFIED" in service.output()


def test_a_row_the_model_cannot_predict_is_refused_alone(reloadable: tuple[ServiceProcess, Path], amqp_url: str) -> None:
    """A model whose arithmetic overflows for some rows, and gives absurd values for others: those
    rows get a 422 over HTTP and go to the DLQ from the queue, with the reason; the rows beside
    them are predicted."""
    service, path = reloadable
    overflowing = LinearRegression().fit(np.eye(10), np.zeros(10))
    overflowing.coef_ = np.array([1e308, 1e308] + [0.0] * 8)
    overflowing.intercept_ = 150.0
    save_model(overflowing, path, {"model_type": "LinearRegression"})
    assert httpx.post(f"{service.url}/model/reload").status_code == 200
    # 150.0; 2e307, finite but beyond TARGET_ABS_MAX; inf.
    fine, absurd, overflows = [0.0] * 10, [0.1, 0.1] + [0.0] * 8, [0.9, 0.9] + [0.0] * 8

    answer = httpx.post(f"{service.url}/predict", json={"instances": [fine, absurd, overflows]})
    assert answer.status_code == 422
    beyond, infinite = answer.json()["detail"]
    assert beyond["loc"] == ["body", "instances", 1] and "TARGET_ABS_MAX" in beyond["msg"]
    assert infinite["loc"] == ["body", "instances", 2] and "not a finite number" in infinite["msg"]

    prefix = service.env["QUEUE_PREFIX"]

    async def through_the_queues() -> tuple[dict, list[dict]]:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for sample_id, features in (
                ("1700000001.000001", fine),
                ("1700000001.000002", absurd),
                ("1700000001.000003", overflows),
            ):
                body = json.dumps({"id": sample_id, "body": features}).encode()
                await channel.default_exchange.publish(aio_pika.Message(body), routing_key=f"{prefix}features")
            async with asyncio.timeout(30):
                predicted = await _first_message(await channel.declare_queue(f"{prefix}y_pred", passive=True))
                dlq = await channel.declare_queue(f"{prefix}features.dlq", passive=True)
                refused = [await _first_message(dlq), await _first_message(dlq)]
            return json.loads(predicted.body), [{"body": json.loads(m.body), **m.headers} for m in refused]

    predicted, refused = asyncio.run(through_the_queues())
    assert predicted["id"] == "1700000001.000001" and predicted["body"] == 150.0
    reasons = {message["body"]["id"]: message["x-dlq-reason"] for message in refused}
    assert "TARGET_ABS_MAX" in reasons["1700000001.000002"] and "predicted inf" in reasons["1700000001.000003"]


async def _first_message(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    async with queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            return message
    raise AssertionError(f"{queue.name} closed")
