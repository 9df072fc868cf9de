"""Segments and the error by prediction time, on the real broker with the real services: tags on
every way in, a categorical feature as a segment, per-segment and per-bucket statistics equal to
pandas over metric_log.csv joined with the tags and times the test sent, revised by late labels,
and the same after metric_api is killed and started again."""

import asyncio
import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import numpy as np
import pandas as pd
import pytest

from harness.datasets import UserModel, feature_bodies, house_prices
from harness.pipeline import Pipeline, running_pipeline
from harness.processes import wait_until
from harness.queues import dead_letters, publish_json
from services.common.messages import format_sample_id
from tests.browser import Chromium
from tests.json_stub import JsonStub
from tests.quality import differences, expected_window

pytestmark = [pytest.mark.broker, pytest.mark.slow]
BUCKET_S = 3600.0
REGIONS = ("EU", "US", "APAC")


def post(pipeline: Pipeline, service: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{pipeline.url(service)}{path}", json=body, timeout=60)


def get(pipeline: Pipeline, path: str) -> dict[str, Any]:
    answer = httpx.get(f"{pipeline.url('metric_api')}{path}", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def post_labels(pipeline: Pipeline, labels: dict[str, float]) -> None:
    answer = post(pipeline, "features_api", "/labels", {"labels": [{"id": i, "y_true": y} for i, y in labels.items()]})
    assert answer.status_code == 200, answer.text


def bucket_of(at: float) -> float:
    return math.floor(at / BUCKET_S) * BUCKET_S


def away_from_a_bucket_edge(margin: float = 90.0) -> None:
    """Predictions made 'now' must all fall in one bucket the test knows: not within ``margin`` of its end."""
    left = BUCKET_S - time.time() % BUCKET_S
    if left < margin:
        time.sleep(left + 1)


def check_against_pandas(pipeline: Pipeline, sent: pd.DataFrame, baseline: float | None) -> None:
    """The summary's segments and /metrics/by-time against pandas over the CSV joined with what was sent."""
    rows = pipeline.rows()
    table = rows.merge(sent, on="id", how="left", validate="one_to_one")
    assert table["predicted_at"].notna().all()
    segments = get(pipeline, "/metrics/summary")["segments"]
    for key in ("region", "city"):
        groups = dict(tuple(table.dropna(subset=[key]).groupby(key, sort=False)))
        assert set(segments[key]["values"]) == set(groups), key
        for value, group in groups.items():
            windows = segments[key]["values"][value]["windows"]
            assert differences(windows["all"], expected_window(group, baseline)) == [], (key, value)
            assert differences(windows["last_100"], expected_window(group.tail(100), baseline)) == [], (key, value)
    by_time = get(pipeline, "/metrics/by-time")
    assert by_time["bucket_s"] == BUCKET_S
    made = sent.groupby("bucket").size()
    buckets = {bucket["start"]: bucket for bucket in by_time["buckets"]}
    assert set(buckets) == set(made.index)
    for start, bucket in buckets.items():
        mine = table[table["bucket"] == start]
        assert bucket["predictions"] == made[start] and bucket["labelled"] == len(mine)
        assert bucket["labelled_share"] == pytest.approx(len(mine) / made[start], rel=1e-12)
        assert differences(bucket["stats"], expected_window(mine, baseline)) == [], start


def test_segments_and_buckets_equal_pandas_over_what_was_sent_revised_by_late_labels_and_after_a_restart(
    tmp_path: Path, house: UserModel, amqp_url: str
) -> None:
    frame = house_prices(600, seed=11).reset_index(drop=True)
    bodies = feature_bodies(frame)
    prices = frame["price"].astype(float).tolist()
    rng = np.random.default_rng(5)
    region = [str(r) for r in rng.choice(REGIONS, len(frame))]
    sent: list[dict[str, Any]] = []  # id, region, city, predicted_at
    later: dict[str, float] = {}  # labels sent only at the end
    with running_pipeline(
        tmp_path, house.model_path, amqp_url, FEATURES_LOOP="false", SEGMENT_KEYS="region,city", MAE_ALERT="1e9"
    ) as pipeline:
        # Bad tags are refused on each way in, naming the tag.
        bad = {"region": "EU", "channel": 7}
        for service, path, body in (
            ("model_api", "/predict", {"features": bodies[0], "tags": bad}),
            ("model_api", "/predictions", {"predictions": [{"id": "bad-1", "prediction": 1.0, "tags": bad}]}),
            ("features_api", "/samples", {"samples": [{"features": bodies[0], "tags": bad}]}),
        ):
            answer = post(pipeline, service, path, body)
            assert answer.status_code == 422 and "the tag 'channel' is int" in answer.text, (path, answer.text)
        too_many = {f"k{i}": "v" for i in range(9)}
        assert (
            "9 tags given, at most 8" in post(pipeline, "model_api", "/predict", {"features": bodies[0], "tags": too_many}).text
        )
        publish_json(
            amqp_url, f"{pipeline.prefix}features", [{"id": "9.000001", "body": bodies[0], "tags": {"region": "x" * 129}}]
        )
        reasons = dead_letters(amqp_url, f"{pipeline.prefix}features", 1)
        assert "the tag 'region' is 129 characters long" in reasons["9.000001"]

        # /predictions: 300 made elsewhere over the last five hours, with features (city) and tags (region).
        now = time.time()
        reported = []
        for n in range(300):
            made_at = now - 3600 * (1 + n % 5) - 17.0 * n % 600
            reported.append(
                {"id": f"rep-{n}", "prediction": prices[n] * 1.05 + 3000 * (n % 7), "features": bodies[n], "ts": made_at}
                | {"tags": {"region": region[n]}}
            )
            sent.append({"id": f"rep-{n}", "region": region[n], "city": bodies[n]["city"], "predicted_at": made_at})
        assert post(pipeline, "model_api", "/predictions", {"predictions": reported}).status_code == 200
        labels = {f"rep-{n}": prices[n] for n in range(300)}
        first = {sample_id: y for n, (sample_id, y) in enumerate(labels.items()) if n % 3}
        later.update({sample_id: y for sample_id, y in labels.items() if sample_id not in first})

        away_from_a_bucket_edge()
        before = time.time()
        # /samples: 150 whole rows with their label and tags (not every one has a region).
        samples = [
            {"id": f"smp-{n}", "features": bodies[n], "y_true": prices[n]} | ({"tags": {"region": region[n]}} if n % 4 else {})
            for n in range(300, 450)
        ]
        assert post(pipeline, "features_api", "/samples", {"samples": samples}).status_code == 200
        # /predict: 100 rows, one call each, with tags; labels later.
        for n in range(450, 550):
            answer = post(
                pipeline, "model_api", "/predict", {"id": f"prd-{n}", "features": bodies[n], "tags": {"region": region[n]}}
            )
            assert answer.status_code == 200, answer.text
            later[f"prd-{n}"] = prices[n]
        # The features queue, with tags.
        publish_json(
            amqp_url,
            f"{pipeline.prefix}features",
            [{"id": f"{before:.6f}", "body": bodies[n], "ts": before, "tags": {"region": region[n]}} for n in [550]],
        )
        later[f"{before:.6f}"] = prices[550]
        after = time.time()
        assert bucket_of(before) == bucket_of(after)
        sent.extend(
            {"id": f"smp-{n}", "region": region[n] if n % 4 else None, "city": bodies[n]["city"], "predicted_at": before}
            for n in range(300, 450)
        )
        sent.extend(
            {"id": f"prd-{n}", "region": region[n], "city": bodies[n]["city"], "predicted_at": before} for n in range(450, 550)
        )
        sent.append({"id": f"{before:.6f}", "region": region[550], "city": bodies[550]["city"], "predicted_at": before})
        table = pd.DataFrame(sent).assign(bucket=lambda t: t["predicted_at"].map(bucket_of))

        post_labels(pipeline, first)
        wait_until(lambda: len(pipeline.rows()) == len(first) + 150, 60, "the first labels' rows")
        wait_until(lambda: get(pipeline, "/metrics/summary")["labels"]["predictions"] == len(table), 30, "every prediction")
        baseline = get(pipeline, "/metrics/summary")["baseline"]["mean"]
        check_against_pandas(pipeline, table, baseline)
        assert any(bucket["labelled_share"] < 1 for bucket in get(pipeline, "/metrics/by-time")["buckets"])

        # kill -9 while predictions wait for their labels: their tags and times wait in the state.
        pipeline.restart("metric_api")
        check_against_pandas(pipeline, table, baseline)
        scraped = httpx.get(f"{pipeline.url('metric_api')}/metrics").text
        eu = get(pipeline, "/metrics/summary")["segments"]["region"]["values"]["EU"]["windows"]["all"]
        assert f'model_segment_rows{{key="region",value="EU",window="all"}} {float(eu["count"])}' in scraped

        # The late labels revise the buckets of their predictions, however old.
        post_labels(pipeline, later)
        wait_until(lambda: len(pipeline.rows()) == len(table), 60, "every row")
        check_against_pandas(pipeline, table, baseline)
        assert all(bucket["labelled_share"] == 1 for bucket in get(pipeline, "/metrics/by-time")["buckets"])

        # kill -9 and start again: the same segments and buckets, rebuilt from the state.
        pipeline.restart("metric_api")
        check_against_pandas(pipeline, table, baseline)


def test_the_demo_with_labels_exp_late_fills_each_bucket_to_a_labelled_share_of_1_and_the_pandas_mae(
    tmp_path: Path, model_path: Path, amqp_url: str
) -> None:
    bucket_s = 4.0
    with running_pipeline(
        tmp_path, model_path, amqp_url, FEATURES_INTERVAL_S="0.05", LABEL_DELAY_S="exp:3", TIME_BUCKET_S=str(bucket_s)
    ) as pipeline:
        # Per bucket, at each look: its labelled rows, and its labelled share once the bucket is over (no
        # prediction of it still on its way: the demo's predictions reach the join within a second).
        labelled: dict[float, list[int]] = {}
        shares: dict[float, list[float]] = {}

        def look() -> dict[str, Any]:
            at = time.time()
            by_time = get(pipeline, "/metrics/by-time")
            for bucket in by_time["buckets"]:
                labelled.setdefault(bucket["start"], []).append(bucket["labelled"])
                if at > bucket["end"] + 1:
                    shares.setdefault(bucket["start"], []).append(bucket["labelled_share"])
            return by_time

        started = time.time()
        while time.time() < started + 12:
            look()
            time.sleep(0.5)
        httpx.post(f"{pipeline.url('features_api')}/features/pause", timeout=10, headers=pipeline.auth)
        sent = wait_until(lambda: httpx.get(f"{pipeline.url('features_api')}/features/status").json()["sent"], 10, "sent")

        def settled() -> dict[str, Any] | None:
            by_time = look()
            done = sum(bucket["labelled"] for bucket in by_time["buckets"]) >= len(pipeline.rows()) >= sent
            return by_time if done else None

        by_time = wait_until(settled, 90, "every label of the demo")
        baseline = get(pipeline, "/metrics/summary")["baseline"]["mean"]
    rows = pipeline.rows()
    rows["bucket"] = (rows["id"].astype(float) // bucket_s) * bucket_s  # the demo's id is its publish time, its ts
    assert len(rows) == sent
    for bucket in by_time["buckets"]:
        mine = rows[rows["bucket"] == bucket["start"]]
        assert bucket["labelled_share"] == 1 and bucket["predictions"] == len(mine)
        assert differences(bucket["stats"], expected_window(mine, baseline)) == []
    assert all(history == sorted(history) for history in labelled.values())  # revised by each late label, never down
    seen = [history for history in shares.values() if len(history) > 3]
    assert seen and all(history == sorted(history) and history[-1] == 1 for history in seen)  # rising to 1
    assert any(history[0] < 1 for history in seen)  # and seen unsettled after its hour (its 4 s) was over


SETTINGS = {"FEATURES_LOOP": "false", "SEGMENT_KEYS": "city", "MAE_ALERT": "15"}


def publish_halves(
    amqp_url: str, prefix: str, halves: list[tuple[str, float, float, dict[str, str]]], estimate: float | None = None
) -> None:
    """Each (id, y_true, y_pred, tags) as its prediction (with the tags, and ``estimate`` as its
    estimated error if given) and its label, on the queues."""

    async def send() -> None:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            for sample_id, y_true, y_pred, tags in halves:
                ts = time.time()
                for queue, body in (
                    (
                        "y_pred",
                        {"id": sample_id, "body": y_pred, "ts": ts, "model_version": "v1", "tags": tags}
                        | ({} if estimate is None else {"estimated_error": estimate}),
                    ),
                    ("y_true", {"id": sample_id, "body": y_true, "ts": ts}),
                ):
                    await channel.default_exchange.publish(
                        aio_pika.Message(json.dumps(body).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=f"{prefix}{queue}",
                    )

    asyncio.run(send())


@contextlib.contextmanager
def cities_pipeline(tmp_path: Path, model_path: Path, amqp_url: str, **settings: str) -> Iterator[tuple[JsonStub, Pipeline]]:
    """The pipeline with the segment key ``city``, its alerts posted to a webhook the test reads."""
    with (
        JsonStub("/alerts") as receiver,
        running_pipeline(
            tmp_path,
            model_path,
            amqp_url,
            FEATURES_LOOP="false",
            SEGMENT_KEYS="city",
            ALERT_WEBHOOK_URL=receiver.url,
            model_replicas=1,
            **settings,
        ) as pipeline,
    ):
        yield receiver, pipeline


def stream_cities(
    pipeline: Pipeline,
    amqp_url: str,
    rng: np.random.Generator,
    calm_batches: int,
    shift: float,
    stop: Callable[[], bool],
    estimate: float | None = None,
) -> int:
    """Batches of 20 rows over four cities (noise N(0, 10)) on the queues, each waited for in the summary:
    ``calm_batches`` calm, then Lyon's predictions ``shift`` too high, until ``stop()`` (60 batches at
    most); returns how many of Lyon's shifted rows were sent."""
    first_us = int(time.time() * 1_000_000)
    sent = lyon_shifted = 0
    for batch in range(60):
        shifted = batch >= calm_batches
        city = rng.choice(np.array(["Paris", "Lyon", "Nice", "Lille"]), 20)
        y_true = rng.integers(25, 347, 20).astype(float)
        y_pred = y_true + rng.normal(0, 10, 20) + np.where(shifted & (city == "Lyon"), shift, 0.0)
        halves = [
            (format_sample_id(first_us + sent + k), float(t), float(p), {"city": str(c)})
            for k, (t, p, c) in enumerate(zip(y_true, y_pred, city, strict=True))
        ]
        publish_halves(amqp_url, pipeline.prefix, halves, estimate=estimate)
        sent += len(halves)
        wait_until(lambda n=sent: get(pipeline, "/metrics/summary")["count"] == n, 30, f"{sent} rows")  # type: ignore[misc]  # n binds the count now
        lyon_shifted += int(np.count_nonzero(city == "Lyon")) if shifted else 0
        if stop():
            break
    return lyon_shifted


def test_one_degraded_segment_raises_its_alert_within_150_of_its_rows_and_the_global_alert_stays_calm(
    tmp_path: Path, model_path: Path, amqp_url: str
) -> None:
    rng = np.random.default_rng(8)
    with cities_pipeline(tmp_path, model_path, amqp_url, MAE_ALERT="15") as (receiver, pipeline):
        # 600 healthy rows, then Lyon's predictions 25 too high
        lyon_degraded = stream_cities(pipeline, amqp_url, rng, 30, 25.0, lambda: bool(receiver.posted))
        posted = [(body["alert"], body["state"]) for body in receiver.posted]
        assert posted == [("segment/city=Lyon", "raised")], posted
        assert 0 < lyon_degraded <= 150
        summary = get(pipeline, "/metrics/summary")
        assert summary["alert"] is None and summary["alerts"]["mae"]["state"] == "cleared"
        assert summary["alerts"]["segment/city=Lyon"]["state"] == "raised"
        details = summary["alerts"]["segment/city=Lyon"]["details"]
        assert details["mae"] > 1.5 * details["reference_mae"] and details["rows"] >= 50
        global_mae = summary["windows"]["last_100"]["mae"]
        print(f"segment alert raised after {lyon_degraded} degraded Lyon rows; global last_100 MAE {global_mae:.2f}")


def test_a_concept_shift_in_one_segment_raises_its_estimate_check_through_the_webhook(
    tmp_path: Path, model_path: Path, amqp_url: str, browser: Chromium
) -> None:
    """Predictions come with the estimate of their error (8: that of a calm row, E|N(0, 10)|); Lyon's
    start to err 12 more, unseen by the estimate and too little for Lyon's MAE alert (factor 3)."""
    rng = np.random.default_rng(11)
    settings = {"SEGMENT_ALERT_FACTOR": "3", "MAE_DETECTOR": "threshold", "MAE_ALERT": "1000"}
    with cities_pipeline(tmp_path, model_path, amqp_url, **settings) as (receiver, pipeline):

        def segment_posts() -> list[tuple[str, str]]:
            return [(body["alert"], body["state"]) for body in receiver.posted if body["alert"].startswith("segment")]

        # 400 calm rows, then Lyon's predictions 12 too high
        lyon_degraded = stream_cities(pipeline, amqp_url, rng, 20, 12.0, lambda: bool(segment_posts()), estimate=8.0)
        assert segment_posts() == [("segment-estimate/city=Lyon", "raised")]
        assert 0 < lyon_degraded <= 150
        summary = get(pipeline, "/metrics/summary")
        alert = summary["alerts"]["segment-estimate/city=Lyon"]
        assert alert["state"] == "raised" and alert["details"]["rows"] >= 50
        lyon = summary["segments"]["city"]["values"]["Lyon"]["checked"]
        paris = summary["segments"]["city"]["values"]["Paris"]["checked"]
        assert lyon["realized_mae"] > lyon["estimated_mae"] + lyon["band"]
        assert abs(paris["realized_mae"] - paris["estimated_mae"]) < 2 * paris["band"]
        wait_until(  # plot_api's merged summary carries the checks too
            lambda: (
                (merged := httpx.get(f"{pipeline.url('plot_api')}/api/summary", timeout=30).json()["segments"])
                and merged["city"]["values"]["Lyon"]["checked"] == lyon
            ),
            30,
            "plot_api's summary to show Lyon's check",
        )
        print(f"segment estimate alert raised after {lyon_degraded} shifted Lyon rows: {alert['summary']}")
        page = browser.open(f"{pipeline.url('plot_api')}/")
        lyon_row = wait_until(
            lambda: page.evaluate(
                "[...document.querySelectorAll('#segments_body tr')]"
                ".map(r => [r.className, ...[...r.cells].map(c => c.textContent)]).find(r => r[1] === 'city = Lyon')"
            ),
            15,
            "Lyon's row in the segments table",
        )
        realized, estimated = (float(x) for x in lyon_row[7].split(" / "))
        assert lyon_row[0] == "raised" and realized > estimated  # red, its realized MAE beside the estimated
        assert page.exceptions() == []
        page.evaluate("document.getElementById('segments').scrollIntoView()")
        shot = page.screenshot(tmp_path / "segments-estimate.png")
        if copy_to := os.environ.get("SEGMENTS_ESTIMATE_SCREENSHOT"):  # e.g. docs/segments-estimate.png
            shutil.copyfile(shot, copy_to)


def test_the_dashboard_ranks_segments_by_their_bound_and_shows_the_unsettled_hours(
    tmp_path: Path, model_path: Path, amqp_url: str, browser: Chromium
) -> None:
    rng = np.random.default_rng(9)
    now = time.time()
    with running_pipeline(
        tmp_path, model_path, amqp_url, FEATURES_LOOP="false", SEGMENT_KEYS="region,channel", MAE_ALERT="1e9"
    ) as pipeline:
        # Eight hours of predictions made elsewhere; EU's are worse since the start, and "tiny" has 3 rows of
        # which one is very wrong: its MAE is the highest, its bound is not.
        predictions, labels = [], {}
        for n in range(1600):
            region = ["EU", "US", "APAC", "LATAM"][n % 4] if n >= 3 else "tiny"
            y_true = float(rng.integers(25, 347))
            error = rng.normal(0, 10) + (25.0 if region == "EU" else 0.0) + (120.0 if n == 0 else 0.0)
            made_at = now - 8 * 3600 + n * 18.0
            tags = {"region": region, "channel": "mobile" if n % 3 else "web"}
            predictions.append({"id": f"p-{n}", "prediction": y_true + error, "ts": made_at, "tags": tags})
            # Labels come late: the older the prediction, the more of its hour is labelled.
            if rng.random() < min(1.0, (now - made_at) / (5 * 3600)):
                labels[f"p-{n}"] = y_true
        assert post(pipeline, "model_api", "/predictions", {"predictions": predictions}).status_code == 200
        post_labels(pipeline, labels)
        wait_until(lambda: len(pipeline.rows()) == len(labels), 60, "the labelled rows")
        summary = get(pipeline, "/metrics/summary")
        page = browser.open(f"{pipeline.url('plot_api')}/")
        shown = wait_until(
            lambda: (
                (
                    rows := page.evaluate(
                        "[...document.querySelectorAll('#segments_body tr')].map(r => [...r.cells].map(c => c.textContent))"
                    )
                )
                and len(rows) > 1
                and rows
            ),
            15,
            "the segments table",
        )
        values = summary["segments"]["region"]["values"]
        assert shown[0][0] == "region = EU"  # worst by the bound
        assert values["tiny"]["windows"]["last_1000"]["mae"] > values["EU"]["windows"]["last_1000"]["mae"]
        tiny = next(i for i, row in enumerate(shown) if row[0] == "region = tiny")
        assert tiny == len(shown) - 1 or shown[tiny][3] == "—" or float(shown[tiny][3]) < float(shown[0][3])
        lows = [float(row[3]) for row in shown if row[3] != "—"]
        assert lows == sorted(lows, reverse=True)

        bars = wait_until(
            lambda: page.evaluate("[...document.querySelectorAll('#by_time_chart rect')].map(r => r.getAttribute('class'))"),
            15,
            "the chart by prediction time",
        )
        by_time = get(pipeline, "/metrics/by-time")
        labelled = [b for b in by_time["buckets"] if b["labelled"]]
        assert bars == ["settled" if b["labelled_share"] == 1 else "unsettled" for b in labelled]
        assert "unsettled" in bars and "settled" in bars  # the unsettled hours stand out
        page.screenshot(tmp_path / "segments.png")
        page.evaluate("document.getElementById('segments').scrollIntoView()")
        shot = page.screenshot(tmp_path / "segments-view.png")
        if copy_to := os.environ.get("SEGMENTS_SCREENSHOT"):  # e.g. docs/segments.png for docs/monitoring.md
            shutil.copyfile(shot, copy_to)
        assert page.exceptions() == []
