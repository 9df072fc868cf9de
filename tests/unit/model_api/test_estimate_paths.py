"""Every way in gives a prediction its estimated error in the y_pred message (issue 24): the features
queue, /predict, and /predictions of a model served elsewhere; none where there is no loss model for it."""

import asyncio
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from httpx import AsyncClient, Response
from sklearn.datasets import load_diabetes

from harness.datasets import HOUSE_FEATURES, feature_bodies, house_prices
from services.common.amqp.consumer import Delivery
from services.common.estimate import loss_model_path
from services.common.files import metadata_path
from services.common.messages import FeaturesMessage, PredictionMessage
from services.common.settings import Settings
from services.model_api.app import create_app
from services.model_api.register import register_elsewhere
from services.model_api.service import ModelService
from tests.unit.in_process import in_process
from tests.unit.stand_in_link import StandInLink

ROWS = load_diabetes().data[:4].tolist()


class Raw:
    redelivered = False


def raw_loss(path: Path, matrix: np.ndarray, predictions: list[float]) -> list[float]:
    """What the stored loss model's regressor gives, read outside the service (scikit-learn's own predict)."""
    with loss_model_path(path).open("rb") as f:
        loss = pickle.load(f)  # noqa: S301 - the test's own freshly written file
    return np.maximum(loss.model.predict(np.column_stack([matrix, predictions])), 0).tolist()


def published(link: StandInLink) -> list[PredictionMessage]:
    return [PredictionMessage.model_validate_json(m.body) for m in link.to("t.y_pred")]


def test_the_queue_and_predict_publish_each_predictions_estimated_error(model_path: Path) -> None:
    settings = Settings(MODEL_PATH=model_path, QUEUE_PREFIX="t.")
    link = StandInLink()
    service = ModelService(settings, link)
    batch = [
        # Raw stands in for aiormq's DeliveredMessage; the handler reads only .redelivered
        Delivery(FeaturesMessage(id=f"1700000000.{n:06d}", body=row, ts=1.0), Raw(), "t.features", 0.0)  # type: ignore[arg-type]
        for n, row in enumerate(ROWS, start=1)
    ]
    assert asyncio.run(service._predict_batch(batch)) == []
    queue = published(link)
    assert [p.estimated_error for p in queue] == pytest.approx(raw_loss(model_path, np.array(ROWS), [p.body for p in queue]))

    http = StandInLink()

    async def scenario(client: AsyncClient) -> Response:
        return await client.post("/predict", json={"ids": ["a", "b"], "instances": ROWS[:2]})

    answer = in_process(create_app(settings, http), scenario)
    assert answer.status_code == 200
    served = published(http)
    assert [p.estimated_error for p in served] == pytest.approx([p.estimated_error for p in queue[:2]])


def test_without_its_loss_model_a_model_serves_on_and_its_predictions_carry_no_estimate(model_path: Path, tmp_path: Path) -> None:
    for suffix in ("", ".json", ".reference.parquet"):
        shutil.copy(model_path.with_name(model_path.name + suffix), tmp_path / f"m.pkl{suffix}")
    settings = Settings(MODEL_PATH=tmp_path / "m.pkl", QUEUE_PREFIX="t.")  # no m.pkl.loss.pkl
    link = StandInLink()

    async def scenario(client: AsyncClient) -> list[Response]:
        return [await client.post("/predict", json={"features": ROWS[0]}), await client.get("/model/info")]

    answer, info = in_process(create_app(settings, link), scenario)
    assert answer.status_code == 200
    assert info.json()["estimate"]["available"] is False
    assert "cannot read the loss model" in info.json()["estimate"]["unavailable_because"]
    assert published(link)[0].estimated_error is None
    assert b"estimated_error" not in link.to("t.y_pred")[0].body  # an older consumer sees the message it knew


def test_a_profile_of_a_model_served_elsewhere_estimates_the_reported_predictions_with_features(tmp_path: Path) -> None:
    frame = house_prices(400, seed=43)
    frame["theirs"] = frame["price"] * (1 + 0.1 * np.sin(np.arange(len(frame))))
    frame.to_csv(tmp_path / "logged.csv", index=False)
    register_elsewhere(tmp_path / "theirs.pkl", tmp_path / "logged.csv", "price", "theirs", version="their-v1")
    assert "loss_model" in json.loads(metadata_path(tmp_path / "theirs.pkl").read_text())
    rows: list[dict[str, Any]] = feature_bodies(frame.iloc[:2], list(HOUSE_FEATURES))
    items = [
        {"id": "x-1", "prediction": 300_000.0, "features": rows[0]},
        {"id": "x-2", "prediction": 300_000.0},  # no features: nothing to estimate from
        {"id": "x-3", "prediction": 300_000.0, "features": rows[1], "model_version": "their-v2"},  # not the profiled model
    ]

    async def scenario(client: AsyncClient) -> Response:
        return await client.post("/predictions", json={"predictions": items})

    link = StandInLink()
    answer = in_process(create_app(Settings(MODEL_PATH=tmp_path / "theirs.pkl", QUEUE_PREFIX="t."), link), scenario)
    assert answer.status_code == 200, answer.text
    estimates = {p.id: p.estimated_error for p in published(link)}
    assert estimates["x-1"] is not None and estimates["x-1"] > 0
    assert estimates["x-2"] is None and estimates["x-3"] is None
