"""Swapping the model under a running pipeline: every id predicted by exactly one model, once."""

import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_diabetes

from harness.pipeline import running_pipeline
from harness.processes import wait_until
from services.model_api.train import train

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def model_info(url: str) -> dict:
    return httpx.get(f"{url}/model/info").json()


def served_from_the_queue(url: str) -> int:
    return sum(paths.get("queue", 0) for paths in model_info(url)["predictions_by_version"].values())


def which_model(y_true: float, y_pred: float, targets: np.ndarray, predictions: dict[str, np.ndarray]) -> list[str]:
    """The models that predict ``y_pred`` for some dataset row whose label is ``y_true``."""
    return [
        name
        for name, predicted in predictions.items()
        if np.isclose(predicted[targets == y_true], y_pred, rtol=1e-12, atol=0).any()
    ]


def test_a_model_swapped_mid_stream_predicts_each_id_once(tmp_path: Path, amqp_url: str) -> None:
    serving = tmp_path / "model" / "serving.pkl"
    serving.parent.mkdir()
    linear_version = train(serving)["sha256"][:12]
    forest = tmp_path / "forest.pkl"
    forest_version = train(forest, model="random_forest")["sha256"][:12]
    features, targets = load_diabetes(return_X_y=True)
    predictions = {
        name: pickle.loads(path.read_bytes()).predict(features)  # noqa: S301 - the test's own files
        for name, path in ((linear_version, serving), (forest_version, forest))
    }

    with running_pipeline(tmp_path, serving, amqp_url) as pipeline:
        model_api = pipeline.url("model_api")
        assert model_info(model_api)["model_version"] == linear_version
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(pipeline.burst, 3000)
            wait_until(lambda: served_from_the_queue(model_api) > 0, 60, "the first predictions")
            shutil.copyfile(forest, serving)
            shutil.copyfile(f"{forest}.json", f"{serving}.json")
            reloaded = httpx.post(f"{model_api}/model/reload", timeout=30)
            ids = first.result()
        assert reloaded.status_code == 200, reloaded.text
        assert (reloaded.json()["previous_version"], reloaded.json()["model_version"]) == (linear_version, forest_version)
        after = pipeline.burst(300)
        ids += after
        rows = pipeline.wait_all_joined(timeout=180)
        sent = pipeline.sent()
        info = model_info(model_api)
        summary = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary", timeout=10).json()

    # Every id once in the CSV, nothing else.
    assert rows["id"].is_unique
    assert set(ids) <= set(rows["id"]) and len(rows) == sent
    # model_api predicted each row once: its per-version counts add up to the rows.
    by_version = {version: paths.get("queue", 0) for version, paths in info["predictions_by_version"].items()}
    assert set(by_version) == {linear_version, forest_version}
    assert sum(by_version.values()) == len(rows), by_version
    # Each row's prediction is one model's (checked against the files, not the service), and
    # the CSV's count per model is the service's count per version.
    made_by = [which_model(t, p, targets, predictions) for t, p in zip(rows["y_true"], rows["y_pred"], strict=True)]
    assert all(len(names) == 1 for names in made_by), [names for names in made_by if len(names) != 1][:5]
    in_csv = {version: sum(names == [version] for names in made_by) for version in by_version}
    assert in_csv == by_version
    # metric_api's before/after, side by side: the same split, and each model's MAE is the
    # MAE of the CSV rows that model predicted.
    assert {version: window["count"] for version, window in summary["by_model_version"].items()} == in_csv
    errors: dict[str, list[float]] = {version: [] for version in in_csv}
    for names, error in zip(made_by, rows["absolute_error"], strict=True):
        errors[names[0]].append(error)
    for version, window in summary["by_model_version"].items():
        assert window["mae"] == pytest.approx(sum(errors[version]) / len(errors[version]), rel=1e-9)
    # The swap came mid-stream: the first burst was predicted partly by each model.
    assert in_csv[linear_version] > 0 and in_csv[forest_version] > len(after), in_csv
    after_rows = rows.set_index("id").loc[after]
    assert all(
        which_model(t, p, targets, predictions) == [forest_version]
        for t, p in zip(after_rows["y_true"], after_rows["y_pred"], strict=True)
    )
