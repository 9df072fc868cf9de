"""A user's own model, not diabetes, on the real broker with the real services: a scikit-learn
Pipeline fitted on a DataFrame with named numeric and categorical columns (harness.datasets'
house prices), registered with its reference file, then monitored through every way in —
/predict by name and in order, /predictions from elsewhere, /samples, and the features and
predictions queues — its labels sent later; every bad input refused naming the feature; drift
flagged by name for a shifted numeric and a shifted categorical column, and nothing on a calm
stream; and a model served elsewhere (a profile, no model file) monitored the same way."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from harness.datasets import HOUSE_FEATURES, UserModel, feature_bodies, house_prices, write_user_model
from harness.pipeline import Pipeline, running_pipeline
from harness.processes import wait_until
from harness.queues import dead_letters, publish_json
from services.model_api.register import register_elsewhere

pytestmark = [pytest.mark.broker, pytest.mark.slow]

FEATURES = list(HOUSE_FEATURES)


def bodies(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return feature_bodies(frame, FEATURES)


def in_order(frame: pd.DataFrame) -> list[list[Any]]:
    return [[row[name] for name in FEATURES] for row in bodies(frame)]


@pytest.fixture
def pipeline(tmp_path: Path, house: UserModel, amqp_url: str) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path, house.model_path, amqp_url, FEATURES_LOOP="false", FEATURES_SEED="3") as running:
        yield running


def post(pipeline: Pipeline, service: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{pipeline.url(service)}{path}", json=body, timeout=60)


def drift(pipeline: Pipeline, seen: int = 0) -> dict[str, Any]:
    """model_api's drift report once its window has seen ``seen`` rows (it is assessed at most once a second)."""

    def report() -> dict[str, Any] | None:
        answer = httpx.get(f"{pipeline.url('model_api')}/drift")
        assert answer.status_code == 200
        return dict(answer.json()) if answer.json()["window"]["seen"] >= seen else None

    return wait_until(report, 15, f"a drift report over {seen} rows", interval=0.2)


def test_every_way_in_gives_one_row_per_labelled_id_holding_the_served_or_logged_prediction(
    pipeline: Pipeline, house: UserModel, amqp_url: str
) -> None:
    frame = house_prices(400, seed=11)
    truth = dict(zip([f"row-{n}" for n in range(400)], frame["price"], strict=True))
    expected: dict[str, float] = {}

    # /predict: one row by name at a time, then a batch in schema order under the caller's ids.
    for n, body in enumerate(bodies(frame.iloc[:40])):
        answer = post(pipeline, "model_api", "/predict", {"id": f"row-{n}", "features": body})
        assert answer.status_code == 200, answer.text
        expected[f"row-{n}"] = answer.json()["prediction"]
    ids = [f"row-{n}" for n in range(40, 100)]
    answer = post(pipeline, "model_api", "/predict", {"ids": ids, "instances": in_order(frame.iloc[40:100])})
    assert answer.status_code == 200, answer.text
    expected.update(zip(ids, answer.json()["predictions"], strict=True))
    np.testing.assert_allclose(
        [expected[f"row-{n}"] for n in range(100)], house.model.predict(frame[FEATURES].iloc[:100]), rtol=1e-9
    )

    # /predictions: made elsewhere (here: the same model with a twist), with and without features.
    logged = {f"row-{n}": float(house.model.predict(frame[FEATURES].iloc[[n]])[0]) + 1000.0 for n in range(100, 200)}
    items = [
        {"id": sample_id, "prediction": logged[sample_id], **({"features": body} if n % 2 else {}), "model_version": "theirs-2"}
        for n, (sample_id, body) in enumerate(zip(logged, bodies(frame.iloc[100:200]), strict=True))
    ]
    answer = post(pipeline, "model_api", "/predictions", {"predictions": items})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 100, "with_features": 50}
    expected.update(logged)

    # The AMQP twins: predictions from elsewhere to `predictions`, features by name to `features`.
    prefix = pipeline.prefix
    queued = {f"row-{n}": 100_000.0 + n for n in range(200, 250)}
    reported = zip(queued.items(), bodies(frame.iloc[200:250]), strict=True)
    publish_json(
        amqp_url,
        f"{prefix}predictions",
        [{"id": sample_id, "body": value, "features": body} for (sample_id, value), body in reported],
    )
    expected.update(queued)
    publish_json(
        amqp_url,
        f"{prefix}features",
        [{"id": f"row-{n}", "body": body} for n, body in zip(range(250, 300), bodies(frame.iloc[250:300]), strict=True)],
    )
    expected.update(zip([f"row-{n}" for n in range(250, 300)], house.model.predict(frame[FEATURES].iloc[250:300]), strict=True))

    # /samples: whole rows by name, half with their label now.
    samples = [
        {"id": f"row-{n}", "features": body, **({"y_true": truth[f"row-{n}"]} if n % 2 else {})}
        for n, body in zip(range(300, 400), bodies(frame.iloc[300:400]), strict=True)
    ]
    answer = post(pipeline, "features_api", "/samples", {"samples": samples})
    assert answer.status_code == 200, answer.text
    expected.update(zip([f"row-{n}" for n in range(300, 400)], house.model.predict(frame[FEATURES].iloc[300:400]), strict=True))

    # Labels later, for all but the last 30 of each way in; the /samples ones given there are not sent again.
    unlabelled = {f"row-{n}" for start in (0, 100, 200, 250) for n in range(start + 20, start + 30)} | {
        f"row-{n}" for n in range(300, 400) if n % 2 == 0
    }
    labels = [
        {"id": sample_id, "y_true": truth[sample_id]}
        for sample_id in truth
        if sample_id not in unlabelled and int(sample_id[4:]) < 300
    ]
    answer = post(pipeline, "features_api", "/labels", {"labels": labels})
    assert answer.status_code == 200, answer.text

    labelled = set(truth) - unlabelled
    wait_until(lambda: len(pipeline.rows()) >= len(labelled), 60, f"{len(labelled)} rows")
    table = pipeline.rows().set_index("id")
    assert table.index.is_unique and set(table.index) == labelled
    for sample_id in labelled:
        assert table.loc[sample_id, "y_true"] == pytest.approx(truth[sample_id], rel=1e-12)
        assert table.loc[sample_id, "y_pred"] == pytest.approx(expected[sample_id], rel=1e-9), sample_id
    assert np.allclose(table["absolute_error"], (table["y_true"] - table["y_pred"]).abs())
    info = httpx.get(f"{pipeline.url('model_api')}/model/info").json()
    by_version = info["predictions_by_version"]
    assert by_version["theirs-2"] == {"reported_http": 100} and by_version["external"] == {"reported_queue": 50}


@pytest.mark.parametrize(
    ("path", "body", "loc", "says"),
    [
        (
            "/predict",
            {"features": {"sqft": 1.0, "city": "Lyon", "built_year": 1990.0, "channel": "web"}},
            ["body", "features", "garden_m2"],
            "feature 'garden_m2' is missing",
        ),
        (
            "/predict",
            {"features": {"sqft": 1.0, "city": "Lyon", "built_year": 1990.0, "channel": "web", "garden_m2": 1, "pool": 1}},
            ["body", "features", "pool"],
            "unknown feature 'pool'",
        ),
        (
            "/predict",
            {"features": {"sqft": "big", "city": "Lyon", "built_year": 1990.0, "channel": "web", "garden_m2": 1}},
            ["body", "features", "sqft"],
            "sqft is numeric: expected a number or null, got the string",
        ),
        (
            "/predict",
            {"features": {"sqft": 1.0, "city": 69, "built_year": 1990.0, "channel": "web", "garden_m2": 1}},
            ["body", "features", "city"],
            "city is categorical: expected a string or null, got the number 69",
        ),
        (
            "/predict",
            {"instances": [[1.0, "Lyon", 1990.0, "web", 1.0], [1.0, "Lyon", 1990.0]]},
            ["body", "instances", 1],
            "holds 5 values in schema order, not 3",
        ),
        (
            "/predictions",
            {
                "predictions": [
                    {"id": "a-1", "prediction": 1.0},
                    {"id": "a-2", "prediction": 2.0, "features": [1.0, "Lyon", "1990", "web", 1.0]},
                ]
            },
            ["body", "predictions", 1, "features", 2],
            "built_year is numeric",
        ),
        (
            "/samples",
            {"samples": [{"features": {"sqft": 1.0, "city": True, "built_year": 1990.0, "channel": "web", "garden_m2": 1}}]},
            ["body", "samples", 0, "features", "city"],
            "city is categorical: expected a string or null, got the boolean true",
        ),
    ],
)
def test_each_bad_input_over_http_is_a_422_naming_the_feature_and_nothing_is_taken(
    pipeline: Pipeline, path: str, body: dict[str, Any], loc: list[Any], says: str
) -> None:
    service = "features_api" if path == "/samples" else "model_api"
    answer = post(pipeline, service, path, body)
    assert answer.status_code == 422, answer.text
    assert any(error["loc"] == loc and says in error["msg"] for error in answer.json()["detail"]), answer.json()
    assert pipeline.queues()["features"][0] == 0
    info = httpx.get(f"{pipeline.url('model_api')}/model/info").json()
    assert info["predictions_by_version"] == {}  # nothing served, reported or sent through the model


def test_each_bad_input_on_the_queues_is_dead_lettered_naming_the_feature(pipeline: Pipeline, amqp_url: str) -> None:
    good = {"sqft": 1200.0, "city": "Lyon", "built_year": 1990.0, "channel": "web", "garden_m2": None}
    prefix = pipeline.prefix
    publish_json(amqp_url, f"{prefix}features", [
        {"id": "bad-1", "body": {**good, "sqft": "big"}},
        {"id": "bad-2", "body": {k: v for k, v in good.items() if k != "city"}},
        {"id": "bad-3", "body": [1200.0, "Lyon", 1990.0, "web"]},
        {"id": "bad-4", "body": [1200.0, "Lyon", 1990.0, "web", None], "schema_id": "0123456789ab"},
    ])  # fmt: skip
    publish_json(amqp_url, f"{prefix}predictions", [
        {"id": "bad-5", "body": 1.0, "features": {**good, "channel": 3}},
        {"id": "bad-6", "body": 1.0, "features": {**good, "pool": True}},
    ])  # fmt: skip
    reasons = dead_letters(amqp_url, f"{prefix}features", 4) | dead_letters(amqp_url, f"{prefix}predictions", 2)
    assert 'sqft is numeric: expected a number or null, got the string "big"' in reasons["bad-1"]
    assert "feature 'city' is missing" in reasons["bad-2"]
    assert "holds 5 values in schema order, not 4" in reasons["bad-3"]
    assert "published in the order of schema 0123456789ab" in reasons["bad-4"]
    assert "channel is categorical: expected a string or null, got the number 3" in reasons["bad-5"]
    assert "unknown feature 'pool'" in reasons["bad-6"]
    refused = wait_until(lambda: (r := drift(pipeline)["refused"]["queue"])["feature_count"] and r, 10, "the refusals counted")
    assert refused["wrong_type"] == 2 and refused["missing_feature"] == 1 and refused["feature_count"] == 1
    assert refused["schema_changed"] == 1 and refused["unknown_feature"] == 1


def test_drift_flags_a_shifted_numeric_and_a_shifted_categorical_column_by_name_and_a_calm_stream_nothing(
    pipeline: Pipeline,
) -> None:
    def predict(frame: pd.DataFrame) -> None:
        for start in range(0, len(frame), 100):
            answer = post(pipeline, "model_api", "/predict", {"instances": bodies(frame.iloc[start : start + 100])})
            assert answer.status_code == 200, answer.text

    calm = house_prices(900, seed=21)  # the reference's distribution, rows it never held
    for start in range(0, 900, 300):
        predict(calm.iloc[start : start + 300])
        report = drift(pipeline, seen=start + 300)
        assert report["status"] == "calm" and report["drifted"] == [], report["drifted"]

    shifted = house_prices(300, seed=22)
    shifted["sqft"] += shifted["sqft"].std()  # one std up
    predict(shifted)
    report = drift(pipeline, seen=1200)
    assert report["status"] == "drifted" and report["features"]["sqft"]["drifted"]
    assert not {"city", "channel", "built_year", "garden_m2"} & set(report["drifted"])

    # The demo's scenario moves half the rows it draws to Nice (10 % of the reference).
    answer = post(pipeline, "features_api", "/features/scenario", {"shift": {"city": {"Nice": 0.5}}})
    assert answer.status_code == 200, answer.text
    pipeline.burst(300)
    report = drift(pipeline, seen=1500)
    assert report["features"]["city"]["drifted"] and "city" in report["drifted"]
    assert not {"sqft", "channel", "built_year", "garden_m2"} & set(report["drifted"])
    assert report["features"]["city"]["kind"] == "categorical"


def test_an_unseen_category_is_served_and_counted(pipeline: Pipeline) -> None:
    row = {"sqft": 1400.0, "city": "Marseille", "built_year": 1990.0, "channel": "web", "garden_m2": None}
    answer = post(pipeline, "model_api", "/predict", {"features": row})
    assert answer.status_code == 200, answer.text
    quality = drift(pipeline, seen=1)["quality"]
    assert quality["unseen"] == {"city": 1} and quality["missing"] == {"garden_m2": 1}
    metrics = httpx.get(f"{pipeline.url('model_api')}/metrics").text
    assert 'model_feature_unseen_values_total{feature="city"} 1.0' in metrics


def test_a_model_served_elsewhere_is_monitored_from_its_profile(tmp_path: Path, amqp_url: str) -> None:
    logged = house_prices(1500, seed=31)
    user = write_user_model(tmp_path / "user", "house")
    logged["their_prediction"] = user.model.predict(logged[FEATURES])
    reference = tmp_path / "logged.csv"
    logged.to_csv(reference, index=False)
    profile = tmp_path / "profile" / "theirs.pkl"
    profile.parent.mkdir()
    register_elsewhere(profile, reference, "price", "their_prediction", version="theirs-9")
    with running_pipeline(tmp_path, profile, amqp_url, FEATURES_LOOP="false", FEATURES_SEED="5") as pipeline:
        refused = post(pipeline, "model_api", "/predict", {"features": bodies(logged.iloc[:1])[0]})
        assert refused.status_code == 503 and "served elsewhere" in refused.json()["detail"]
        assert "POST /predictions" in refused.json()["detail"]
        frame = house_prices(50, seed=32)
        theirs = user.model.predict(frame[FEATURES]).round(2).tolist()
        items = [{"id": f"ext-{n}", "prediction": theirs[n], "features": body} for n, body in enumerate(bodies(frame))]
        assert post(pipeline, "model_api", "/predictions", {"predictions": items}).status_code == 200
        labels = [{"id": f"ext-{n}", "y_true": float(price)} for n, price in enumerate(frame["price"])]
        assert post(pipeline, "features_api", "/labels", {"labels": labels}).status_code == 200
        # The demo replays the reference's logged predictions through the predictions queue.
        demo = pipeline.burst(40)
        wait_until(lambda: len(pipeline.rows()) >= 90, 60, "90 rows")
        table = pipeline.rows().set_index("id")
        assert set(table.index) == {f"ext-{n}" for n in range(50)} | set(demo)
        assert [table.loc[f"ext-{n}", "y_pred"] for n in range(50)] == theirs
        replayed = table.loc[demo]
        by_truth = dict(zip(logged["price"].round(6), logged["their_prediction"], strict=True))
        for y_true, y_pred in zip(replayed["y_true"], replayed["y_pred"], strict=True):
            assert y_pred == pytest.approx(by_truth[round(float(y_true), 6)], rel=1e-9)
        report = drift(pipeline, seen=90)
        assert report["status"] == "calm" and report["model_version"] == "theirs-9" and report["window"]["count"] == 90
