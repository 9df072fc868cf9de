"""The four real services against the real RabbitMQ: a burst in, CSV rows and a PNG out."""

import io
import math
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_diabetes

from harness.pipeline import Pipeline, running_pipeline
from harness.processes import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, model_path: Path, amqp_url: str) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path_factory.mktemp("pipeline"), model_path, amqp_url, FEATURES_INTERVAL_S="0.5") as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def dataset() -> tuple[np.ndarray, np.ndarray]:
    return load_diabetes(return_X_y=True)


@pytest.fixture(scope="module")
def model(pipeline: Pipeline) -> Any:
    return pickle.loads(pipeline.model_path.read_bytes())  # noqa: S301 - the model file this test session trained


@pytest.fixture
def paused(pipeline: Pipeline) -> Iterator[Pipeline]:
    """The features loop paused and every sample sent so far joined: a still pipeline."""
    features = pipeline.url("features_api")
    assert httpx.post(f"{features}/features/pause").json()["paused"] is True
    pipeline.wait_all_joined()
    yield pipeline
    assert httpx.post(f"{features}/features/resume").json()["paused"] is False


def read_rows(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv, dtype={"id": str})


def test_a_burst_becomes_exactly_one_correct_row_per_id(
    paused: Pipeline, dataset: tuple[np.ndarray, np.ndarray], model: Any
) -> None:
    features, targets = dataset
    ids = paused.burst(300)
    assert len(set(ids)) == 300

    paused.wait_all_joined()
    text = paused.csv.read_text()
    rows = read_rows(paused.csv)

    assert text.splitlines()[0] == "id,y_true,y_pred,absolute_error"
    assert " " not in text
    assert rows["id"].is_unique
    assert set(ids) <= set(rows["id"])
    assert len(rows) == paused.sent()
    assert (rows["absolute_error"] == (rows["y_true"] - rows["y_pred"]).abs()).all()
    # Each row is a dataset row: its label is a target, its prediction the model's for
    # a row with that target (the CSV has no features, so match on the pair).
    predictions = model.predict(features)
    for y_true, y_pred in zip(rows["y_true"], rows["y_pred"], strict=True):
        candidates = predictions[targets == y_true]
        assert candidates.size, f"y_true {y_true} is not a target of the diabetes data"
        assert np.isclose(candidates, y_pred, rtol=1e-12, atol=0).any(), f"y_pred {y_pred} is no prediction for y_true {y_true}"


def test_the_loop_publishes_on_its_own_until_paused(pipeline: Pipeline) -> None:
    before = pipeline.sent()
    wait_until(lambda: pipeline.sent() >= before + 3, 10, "the 0.5 s loop to send 3 samples")
    status = httpx.post(f"{pipeline.url('features_api')}/features/pause").json()
    assert status["paused"] is True and status["interval_s"] == 0.5
    rows = pipeline.wait_all_joined()
    stopped_at = pipeline.sent()

    time.sleep(1.5)  # longer than 2 loop intervals
    assert pipeline.sent() == stopped_at == len(rows)
    httpx.post(f"{pipeline.url('features_api')}/features/resume")
    wait_until(lambda: pipeline.sent() > stopped_at, 10, "the loop to resume")


def test_summary_and_recent_agree_with_the_csv(paused: Pipeline) -> None:
    paused.burst(50)
    paused.wait_all_joined()
    rows = read_rows(paused.csv)
    summary = httpx.get(f"{paused.url('metric_api')}/metrics/summary").json()

    assert summary["count"] == len(rows)
    assert math.isclose(summary["mae"], rows["absolute_error"].mean(), rel_tol=1e-9)
    assert math.isclose(summary["rmse"], math.sqrt((rows["absolute_error"] ** 2).mean()), rel_tol=1e-9)
    assert summary["last_id"] == rows["id"].iloc[-1]
    assert summary["join"]["pending_y_true"] == summary["join"]["pending_y_pred"] == 0

    recent = httpx.get(f"{paused.url('metric_api')}/metrics/recent", params={"limit": 5}).json()
    assert [r["id"] for r in recent] == list(rows["id"].iloc[-5:])
    assert [r["absolute_error"] for r in recent] == list(rows["absolute_error"].iloc[-5:])
    for bad in (0, -1, 100_000, "x"):
        answer = httpx.get(f"{paused.url('metric_api')}/metrics/recent", params={"limit": bad})
        assert answer.status_code == 422, (bad, answer.text)


def test_the_png_is_redrawn_after_new_rows(paused: Pipeline) -> None:
    plot = f"{paused.url('plot_api')}/plot/latest.png"
    png_file = paused.logs_dir / "error_distribution.png"
    first = paused.settled_charts()["/plot/latest.png"]
    assert first.headers["content-type"] == "image/png"
    assert first.content.startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(io.BytesIO(first.content)).shape[1] > 0
    assert first.headers["cache-control"] == "no-cache"
    etag = first.headers["etag"]
    assert httpx.get(plot, headers={"If-None-Match": etag}).status_code == 304
    wait_until(lambda: png_file.read_bytes() == first.content, 5, "the file on disk to be the served image")

    paused.burst(40)
    paused.wait_all_joined()
    second = wait_until(lambda: (r := httpx.get(plot)).headers["etag"] != etag and r, 10, "a redrawn histogram")
    assert second.content.startswith(PNG_SIGNATURE) and second.content != first.content
    assert httpx.get(plot, headers={"If-None-Match": etag}).status_code == 200
    wait_until(lambda: png_file.read_bytes() == second.content, 5, "the redrawn file on disk")
    assert not [p.name for p in paused.logs_dir.iterdir() if p.name.endswith(".tmp")]


def test_predict_answers_like_the_model_and_refuses_bad_input(
    pipeline: Pipeline, dataset: tuple[np.ndarray, np.ndarray], model: Any
) -> None:
    features, _ = dataset
    url = pipeline.url("model_api")
    info = httpx.get(f"{url}/model/info").json()
    assert info["model_type"] == "LinearRegression" and len(info["model_version"]) == 12

    answer = httpx.post(f"{url}/predict", json={"features": features[7].tolist()})
    assert answer.status_code == 200
    assert math.isclose(answer.json()["prediction"], model.predict(features[7:8])[0], rel_tol=1e-12)
    assert answer.json()["model_version"] == info["model_version"]

    nan_row = "[" + ",".join(["NaN"] + ["0.1"] * 9) + "]"
    for body in (
        {"features": features[7].tolist()[:9]},
        {"features": [*features[7].tolist(), 0.0]},
        {"features": ["a"] * 10},
        {"features": [True] * 10},
        {},
    ):
        assert httpx.post(f"{url}/predict", json=body).status_code == 422, body
    raw = httpx.post(f"{url}/predict", content=f'{{"features": {nan_row}}}', headers={"content-type": "application/json"})
    assert raw.status_code == 422


def test_every_service_is_healthy_and_scrapeable(pipeline: Pipeline) -> None:
    for name, service in pipeline.services.items():
        health = httpx.get(f"{service.url}/health")
        assert health.status_code == 200 and health.json()["status"] == "ok", (name, health.text)
        families = {f.name for f in text_string_to_metric_families(httpx.get(f"{service.url}/metrics").text)}
        assert "process_resident_memory_bytes" in families, name
        assert httpx.get(f"{service.url}/docs").status_code == 200
    features_metrics = httpx.get(f"{pipeline.url('features_api')}/metrics").text
    published = {
        s.labels["queue"]: s.value
        for f in text_string_to_metric_families(features_metrics)
        if f.name == "messages_published"
        for s in f.samples
        if s.name == "messages_published_total"
    }
    assert {k.rsplit(".", 1)[-1] for k in published} == {"features", "y_true"}
    assert all(v > 0 for v in published.values())


def test_burst_refuses_bad_counts(pipeline: Pipeline) -> None:
    url = f"{pipeline.url('features_api')}/features/publish"
    for body in ({"count": 0}, {"count": -3}, {"count": 10**7}, {"count": "many"}, {}):
        assert httpx.post(url, json=body).status_code == 422, body


def test_dashboard_page_and_its_summary_feed(paused: Pipeline) -> None:
    page = httpx.get(f"{paused.url('plot_api')}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "plot/latest.png" in page.text and "api/summary" in page.text
    relayed = httpx.get(f"{paused.url('plot_api')}/api/summary").json()
    direct = httpx.get(f"{paused.url('metric_api')}/metrics/summary").json()
    assert relayed == direct
