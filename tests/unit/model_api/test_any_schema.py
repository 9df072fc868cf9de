"""model_api in process with a user's own model (a Pipeline over a DataFrame with named numeric and
categorical columns, registered with its reference file), its broker link a stand-in: /predict by
name and in order, /predictions from elsewhere, /model/schema, the queue handlers, and a profile
of a model served elsewhere. The real broker runs the same paths in tests/integration/test_any_schema.py."""

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from httpx import AsyncClient, Response

from harness.datasets import HOUSE_FEATURES, UserModel, feature_bodies, house_prices
from services.common.amqp.consumer import Delivery
from services.common.messages import PredictionMessage, ReportedPrediction
from services.common.settings import Settings
from services.model_api.app import create_app
from services.model_api.register import register, register_elsewhere
from services.model_api.service import REPORTED_MAX, ModelService
from tests.unit.in_process import in_process
from tests.unit.stand_in_link import StandInLink

FEATURES = list(HOUSE_FEATURES)


@pytest.fixture
def settings(house: UserModel) -> Settings:
    return Settings(MODEL_PATH=house.model_path, QUEUE_PREFIX="t.")


def bodies(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return feature_bodies(frame, FEATURES)


class Raw:
    redelivered = False


def test_predict_by_name_and_in_order_answers_what_the_pipeline_predicts(settings: Settings, house: UserModel) -> None:
    frame = house_prices(5, seed=40)
    rows = bodies(frame)

    async def scenario(client: AsyncClient) -> list[Response]:
        return [
            await client.post("/predict", json={"id": "one", "features": rows[0]}),
            await client.post("/predict", json={"instances": [[row[name] for name in FEATURES] for row in rows]}),
            await client.get("/model/schema"),
        ]

    link = StandInLink()
    one, batch, schema = in_process(create_app(settings, link), scenario)
    truth = house.model.predict(frame[FEATURES])
    assert one.status_code == 200 and one.json()["prediction"] == pytest.approx(truth[0], rel=1e-12)
    assert batch.json()["predictions"] == pytest.approx(truth.tolist(), rel=1e-12)
    assert [f["name"] for f in schema.json()["features"]] == FEATURES
    assert schema.json()["features"][1] == {
        "name": "city",
        "kind": "categorical",
        "missing_share": 0.0,
        "categories": ["Paris", "Lyon", "Lille", "Nice"],
    }
    published = [PredictionMessage.model_validate_json(m.body) for m in link.to("t.y_pred")]
    assert published[0].id == "one" and len(published) == 6


def test_predictions_from_elsewhere_are_published_with_their_values_and_feed_drift(settings: Settings) -> None:
    frame = house_prices(60, seed=41)
    items = [
        {"id": f"ext-{n}", "prediction": 1000.0 + n, "ts": 1700000000.0 + n, **({"features": body} if n < 40 else {})}
        for n, body in enumerate(bodies(frame))
    ]
    items[0]["model_version"] = "v7"

    async def scenario(client: AsyncClient) -> tuple[Response, Response]:
        return await client.post("/predictions", json={"predictions": items}), await client.get("/drift")

    link = StandInLink()
    answer, drift = in_process(create_app(settings, link), scenario)
    assert answer.status_code == 200 and answer.json() == {"accepted": 60, "with_features": 40}
    published = [PredictionMessage.model_validate_json(m.body) for m in link.to("t.y_pred")]
    assert [(p.id, p.body, p.ts) for p in published] == [(f"ext-{n}", 1000.0 + n, 1700000000.0 + n) for n in range(60)]
    assert [p.model_version for p in published[:2]] == ["v7", "external"]  # a model served here: others' default "external"
    assert drift.json()["window"]["seen"] == 40


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        ({"predictions": []}, ["body", "predictions"], "at least 1"),
        ({"predictions": [{"id": "a", "prediction": 1.0}] * 2}, ["body"], "given more than once: a"),
        ({"predictions": [{"id": "a", "prediction": "1"}]}, ["body", "predictions", 0, "prediction"], ""),
        ({"predictions": [{"id": "a b", "prediction": 1.0}]}, ["body", "predictions", 0, "id"], "an id is 1 to 64"),
        (
            {"predictions": [{"id": "a", "prediction": 1.0, "features": {"sqft": 1}}]},
            ["body", "predictions", 0, "features", "city"],
            "feature 'city' is missing",
        ),
        (
            {"predictions": [{"id": "a", "prediction": 1.0, "features": [1, "x", 2, "y", "z"]}]},
            ["body", "predictions", 0, "features", 4],
            "garden_m2 is numeric",
        ),
        (
            {"predictions": [{"id": "a", "prediction": 1.0, "colour": "red"}]},
            ["body", "predictions", 0, "colour"],
            "Extra inputs",
        ),
    ],
)
def test_a_bad_predictions_request_is_refused_whole_naming_the_item(
    settings: Settings, body: Any, loc: list[Any], says: str
) -> None:
    link = StandInLink()
    answer = in_process(create_app(settings, link), lambda client: client.post("/predictions", json=body))
    assert answer.status_code == 422, answer.text
    assert any(error["loc"][: len(loc)] == loc and says in error["msg"] for error in answer.json()["detail"]), answer.json()
    assert link.published == []


def test_ten_thousand_predictions_are_taken_and_one_more_is_refused(settings: Settings) -> None:
    items = [{"id": f"p-{n}", "prediction": float(n)} for n in range(REPORTED_MAX + 1)]

    async def scenario(client: AsyncClient) -> tuple[Response, Response]:
        return (
            await client.post("/predictions", json={"predictions": items}),
            await client.post("/predictions", json={"predictions": items[:REPORTED_MAX]}),
        )

    link = StandInLink()
    refused, taken = in_process(create_app(settings, link), scenario)
    assert refused.status_code == 422 and taken.status_code == 200 and len(link.to("t.y_pred")) == REPORTED_MAX


def test_the_predictions_queue_handler_publishes_each_and_feeds_drift(settings: Settings) -> None:
    link = StandInLink()
    service = ModelService(settings, link)
    schema = service.model.schema
    rows = bodies(house_prices(3, seed=42))
    batch = [
        Delivery(ReportedPrediction(id=f"q-{n}", body=float(n), features=schema.row(row)), Raw(), "t.predictions", 0.0)  # type: ignore[arg-type]  # a stand-in raw delivery
        for n, row in enumerate(rows)
    ]
    assert asyncio.run(service._reported_batch(batch)) == []
    assert [PredictionMessage.model_validate_json(m.body).id for m in link.to("t.y_pred")] == ["q-0", "q-1", "q-2"]
    assert service.drift.monitor.window.seen == 3


def test_a_profile_of_a_model_served_elsewhere_answers_predict_503_and_takes_predictions(tmp_path: Path) -> None:
    frame = house_prices(300, seed=43)
    frame["theirs"] = frame["price"] * 1.05
    reference = tmp_path / "logged.csv"
    frame.to_csv(reference, index=False)
    register_elsewhere(tmp_path / "theirs.pkl", reference, "price", "theirs", version="their-v1")
    rows = bodies(frame.iloc[:2])

    async def scenario(client: AsyncClient) -> list[Response]:
        return [
            await client.post("/predict", json={"features": rows[0]}),
            await client.post("/predictions", json={"predictions": [{"id": "x-1", "prediction": 1.0, "features": rows[1]}]}),
            await client.get("/model/info"),
            await client.get("/health"),
        ]

    link = StandInLink()
    predict, predictions, info, health = in_process(
        create_app(Settings(MODEL_PATH=tmp_path / "theirs.pkl", QUEUE_PREFIX="t."), link), scenario
    )
    assert predict.status_code == 503 and "no model file is registered here" in predict.json()["detail"]
    assert predictions.status_code == 200
    assert PredictionMessage.model_validate_json(link.to("t.y_pred")[0].body).model_version == "their-v1"
    assert info.json()["served_here"] is False and info.json()["model_version"] == "their-v1"
    assert health.status_code == 200  # everything else works


def test_features_on_the_queue_for_a_profile_are_refused_saying_there_is_no_model(tmp_path: Path) -> None:
    frame = house_prices(100, seed=44)
    frame["theirs"] = frame["price"]
    frame.to_csv(tmp_path / "logged.csv", index=False)
    register_elsewhere(tmp_path / "theirs.pkl", tmp_path / "logged.csv", "price", "theirs")
    service = ModelService(Settings(MODEL_PATH=tmp_path / "theirs.pkl", QUEUE_PREFIX="t."), StandInLink())
    from services.common.messages import FeaturesMessage

    delivery = Delivery(FeaturesMessage(id="1.000001", body=list(bodies(frame.iloc[:1])[0].values())), Raw(), "t.features", 0.0)  # type: ignore[arg-type]  # a stand-in raw delivery
    [(refused, reason)] = asyncio.run(service._predict_batch([delivery]))
    assert refused is delivery and "model_api cannot predict: no model file is registered here" in reason


def test_a_row_the_model_refuses_is_refused_alone_with_the_models_reason(tmp_path: Path) -> None:
    """A Pipeline without an imputer raises on a missing number: that row gets a 422 with its reason, the other is served."""
    import pickle

    from sklearn.linear_model import LinearRegression

    frame = house_prices(400, seed=45)
    model = LinearRegression().fit(frame[["sqft", "built_year"]].iloc[:200], frame["price"].iloc[:200])
    (tmp_path / "strict.pkl").write_bytes(pickle.dumps(model))
    frame[["sqft", "built_year", "price"]].iloc[200:].to_csv(tmp_path / "ref.csv", index=False)
    register(tmp_path / "strict.pkl", tmp_path / "ref.csv", "price")
    app = create_app(Settings(MODEL_PATH=tmp_path / "strict.pkl", QUEUE_PREFIX="t."), StandInLink())
    answer = in_process(
        app,
        lambda client: client.post(
            "/predict", json={"instances": [{"sqft": 1000, "built_year": 1990}, {"sqft": None, "built_year": 1990}]}
        ),
    )
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "instances", 1] and "ValueError" in error["msg"] and "NaN" in error["msg"]
    assert np.isfinite(model.predict(pd.DataFrame({"sqft": [1000.0], "built_year": [1990.0]}))[0])
