"""Monitoring your own model, on the real broker with the real services: predictions served over
HTTP under your ids, labels sent hours (here: seconds) later, whole samples, and the demo as one
source among others, its labels held back on the broker while features_api is dead."""

import asyncio
import pickle
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from harness.pipeline import Pipeline, running_pipeline
from harness.processes import wait_until
from harness.queues import ready_messages
from services.common.files import METRIC_STATE, ORPHAN_LOG

pytestmark = [pytest.mark.broker, pytest.mark.slow]
ORPHAN_TTL_S = 2.0
LABEL_DELAY_S = 8.0


def summary(pipeline: Pipeline) -> dict[str, Any]:
    answer = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary")
    assert answer.status_code == 200
    return dict(answer.json())


def listed_orphans(pipeline: Pipeline) -> set[str]:
    path = pipeline.logs_dir / ORPHAN_LOG
    return set(pd.read_csv(path, dtype={"id": str})["id"]) if path.exists() else set()


def joined_at(pipeline: Pipeline, ids: list[str]) -> dict[str, float]:
    """When metric_api made each id's row (its state file, read-only while it runs)."""
    marks = ",".join("?" * len(ids))
    with closing(sqlite3.connect(f"file:{pipeline.logs_dir / METRIC_STATE}?mode=ro", uri=True)) as db:
        return dict(db.execute(f"SELECT id, written_at FROM written WHERE id IN ({marks})", ids).fetchall())  # noqa: S608 - "?" marks only


def post_labels(pipeline: Pipeline, labels: dict[str, float]) -> None:
    body = {"labels": [{"id": sample_id, "y_true": y_true} for sample_id, y_true in labels.items()]}
    answer = httpx.post(f"{pipeline.url('features_api')}/labels", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": len(labels)}


async def predict_each(url: str, rows: dict[str, list[float]]) -> dict[str, Any]:
    """One POST /predict per row, under its id, 20 at a time; the answers by id."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answers: dict[str, Any] = {}
        ids = list(rows)
        for start in range(0, len(ids), 20):
            calls = [
                client.post("/predict", json={"id": sample_id, "features": rows[sample_id]})
                for sample_id in ids[start : start + 20]
            ]
            for answer in await asyncio.gather(*calls):
                assert answer.status_code == 200, answer.text
                answers[answer.json()["id"]] = answer.json()
        return answers


def test_own_predictions_late_labels_samples_and_the_delayed_demo_give_one_row_per_labelled_id(
    tmp_path: Path, model_path: Path, amqp_url: str
) -> None:
    rows_x, _ = load_diabetes(return_X_y=True)
    model = pickle.loads(model_path.read_bytes())  # noqa: S301 - the model file this test session trained
    with running_pipeline(
        tmp_path, model_path, amqp_url, FEATURES_LOOP="false", ORPHAN_TTL_S=str(ORPHAN_TTL_S), LABEL_DELAY_S=str(LABEL_DELAY_S)
    ) as pipeline:
        # 200 predictions served over HTTP, each under the caller's id.
        answers = asyncio.run(predict_each(pipeline.url("model_api"), {f"order-{n:03d}": rows_x[n].tolist() for n in range(200)}))
        assert all(answer["monitored"] for answer in answers.values()) and len(answers) == 200
        served = {sample_id: answer["prediction"] for sample_id, answer in sorted(answers.items())}
        truth = {sample_id: 100.0 + n for n, sample_id in enumerate(served)}
        orders = list(served)
        labelled_now, labelled_late, never_labelled = orders[:60], orders[60:120], orders[120:]
        post_labels(pipeline, {sample_id: truth[sample_id] for sample_id in labelled_now})

        # 100 whole samples: half with their label, half without (25 of those labelled later).
        samples = [
            {"id": f"row-{n:03d}", "features": rows_x[200 + n].tolist(), **({"y_true": 50.0 + n} if n < 50 else {})}
            for n in range(100)
        ]
        answer = httpx.post(f"{pipeline.url('features_api')}/samples", json={"samples": samples}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["ids"] == [sample["id"] for sample in samples] and answer.json()["labels"] == 50
        sample_truth = {f"row-{n:03d}": 50.0 + n for n in range(75)}
        sample_prediction = dict(zip([s["id"] for s in samples], model.predict(rows_x[200:300]), strict=True))

        # ORPHAN_TTL_S passes: every prediction still without its label is counted missing, and listed.
        missing = {*labelled_late, *never_labelled, *(f"row-{n:03d}" for n in range(50, 100))}
        wait_until(lambda: listed_orphans(pipeline) == missing, 10, "orphans.csv to list the predictions still unlabelled")
        assert summary(pipeline)["join"]["orphans"] == len(missing)
        # Their labels, after that: they still join.
        post_labels(pipeline, {sample_id: truth[sample_id] for sample_id in labelled_late})
        post_labels(pipeline, {sample_id: sample_truth[sample_id] for sample_id in list(sample_truth)[50:]})

        # The demo, its labels LABEL_DELAY_S late: a burst, then kill -9 of features_api at once.
        started = time.time()
        demo = pipeline.burst(30)
        pipeline.services.pop("features_api").stop(signal.SIGKILL)  # and it stays dead
        delay_queue = f"{pipeline.prefix}y_true.delay.8000ms"
        assert ready_messages(amqp_url, [delay_queue]) == {delay_queue: 30}  # on the broker, in no process
        while time.time() < started + LABEL_DELAY_S - 0.2:
            assert not set(pipeline.rows()["id"]) & set(demo), "a demo row before its label's delay"
            time.sleep(0.2)
        expected = [*labelled_now, *labelled_late, *sample_truth, *demo]
        wait_until(lambda: len(pipeline.rows()) >= len(expected), 20, f"{len(expected)} rows")
        # The CSV row is fsynced before the state's transaction commits (docs/guarantees.md): wait for the state too.
        demo_rows_at = wait_until(
            lambda: (at := joined_at(pipeline, demo)).keys() == set(demo) and at, 10, "the state to commit the rows"
        )
        assert min(demo_rows_at[sample_id] - float(sample_id) for sample_id in demo) >= LABEL_DELAY_S  # id = publish time

        still_missing = {*never_labelled, *(f"row-{n:03d}" for n in range(75, 100))}
        wait_until(lambda: listed_orphans(pipeline) == still_missing, 10, "orphans.csv to drop the halves that joined")
        table = pipeline.rows()
        assert table["id"].is_unique and set(table["id"]) == set(expected)
        rows = {row.id: (row.y_true, row.y_pred) for row in table.itertuples()}
        for sample_id in [*labelled_now, *labelled_late]:
            assert rows[sample_id] == (truth[sample_id], served[sample_id])  # the label sent, the prediction served
        for sample_id, y_true in sample_truth.items():
            assert rows[sample_id][0] == y_true
            assert rows[sample_id][1] == pytest.approx(sample_prediction[sample_id], rel=1e-12)
        assert np.allclose(table["absolute_error"], (table["y_true"] - table["y_pred"]).abs())

        labels = summary(pipeline)["labels"]
        join = summary(pipeline)["join"]
        predictions = len(served) + len(samples) + len(demo)
        assert labels["predictions"] == predictions and labels["labelled"] == len(expected)
        assert labels["labelled_share"] == pytest.approx(len(expected) / predictions)
        # Late joins: every label sent after ORPHAN_TTL_S, and every demo label (LABEL_DELAY_S > ORPHAN_TTL_S);
        # a prompt one too if sending it took this machine longer than ORPHAN_TTL_S.
        late = len(labelled_late) + 25 + len(demo)
        assert join["orphans"] == len(still_missing) and late <= join["late_joins"] <= late + len(labelled_now)
        assert sum(labels["waiting"]["y_pred"].values()) == len(still_missing)
        demo_lateness = [demo_rows_at[sample_id] - float(sample_id) for sample_id in demo]
        print(
            f"\nown model: {len(expected)} rows of {predictions} predictions, labelled share {labels['labelled_share']:.3f}; "
            f"label lag p50 {labels['lag_p50_s']:.2f} s, p99 {labels['lag_p99_s']:.2f} s; late joins {join['late_joins']}; "
            f"demo rows {min(demo_lateness):.2f}-{max(demo_lateness):.2f} s after publish "
            f"(LABEL_DELAY_S={LABEL_DELAY_S:g}, features_api killed -9 right after publishing)"
        )
