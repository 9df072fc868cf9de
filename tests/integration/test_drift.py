"""The drift story a learner watches, on the real pipeline and broker, in a real headless Chromium:
shift bmi with a scenario, and model_api flags bmi and the prediction, its gauges and the webhook
say so, the dashboard shows it — and the MAE follows once the labels are joined."""

import functools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.pipeline import Pipeline, running_pipeline
from harness.processes import wait_until
from tests.browser import BrowserError, Chromium, Page
from tests.json_stub import JsonStub

pytestmark = [pytest.mark.broker, pytest.mark.slow]
WINDOW = 300  # DRIFT_WINDOW_SIZE's default


@pytest.fixture(scope="module")
def webhook() -> Iterator[JsonStub]:
    with JsonStub("/alerts") as receiver:
        yield receiver


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, model_path: Path, amqp_url: str, webhook: JsonStub) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path_factory.mktemp("drift"), model_path, amqp_url, ALERT_WEBHOOK_URL=webhook.url) as pipeline:
        yield pipeline


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    try:
        with Chromium(tmp_path / "chromium") as browser:
            yield browser
    except BrowserError as exc:
        pytest.fail(str(exc))


def drift(pipeline: Pipeline) -> dict:
    return httpx.get(f"{pipeline.url('model_api')}/drift").json()


def seen(pipeline: Pipeline, count: int) -> dict | None:
    report = drift(pipeline)
    return report if report["window"]["seen"] >= count else None


def tile_states(page: Page) -> dict[str, str]:
    return page.evaluate("Object.fromEntries([...document.querySelectorAll('.tile')].map(t => [t.id, t.dataset.state]))")


def gauges(pipeline: Pipeline) -> dict[tuple[str, ...], float]:
    text = httpx.get(f"{pipeline.url('model_api')}/metrics").text
    return {
        (sample.name, *sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("model_drift")
        for sample in family.samples
    }


def test_a_bmi_shift_is_flagged_at_once_shown_on_the_dashboard_and_the_mae_follows(
    pipeline: Pipeline, webhook: JsonStub, browser: Chromium, tmp_path: Path
) -> None:
    features, plot = pipeline.url("features_api"), pipeline.url("plot_api")
    pipeline.burst(WINDOW)
    calm = wait_until(functools.partial(seen, pipeline, WINDOW), 30, "model_api to see the calm samples")
    assert calm["status"] == "calm" and calm["drifted"] == [], calm["drifted"]
    pipeline.wait_all_joined()
    mae_before = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()["windows"]["last_100"]["mae"]
    page = browser.open(f"{plot}/")
    wait_until(lambda: tile_states(page).get("drift_bmi") == "calm", 30, "the dashboard to show bmi calm")

    answer = httpx.post(f"{features}/features/scenario", json={"shift": {"bmi": 1.0}})
    assert answer.status_code == 200 and answer.json()["active"], answer.text
    pipeline.burst(WINDOW)  # a window's worth of shifted samples
    shifted = wait_until(functools.partial(seen, pipeline, 2 * WINDOW), 30, "model_api to see the shifted samples")
    flagged = wait_until(lambda: (report := drift(pipeline))["drifted"] and report, 5, "drift to be flagged")
    assert set(flagged["drifted"]) == {"bmi", "prediction"}, flagged["drifted"]
    assert flagged["features"]["bmi"]["ks_p"] <= flagged["rule"]["threshold"] and shifted["window"]["count"] == WINDOW

    states = wait_until(lambda: (s := tile_states(page)).get("drift_bmi") == "drifted" and s, 30, "the dashboard to flag bmi")
    assert states["drift_prediction"] == "drifted"
    assert {name for name, state in states.items() if state == "drifted"} == {"drift_bmi", "drift_prediction"}
    banner = page.evaluate("(a => a.offsetHeight > 0 && a.textContent)(document.getElementById('drift_alert'))")
    assert banner and "bmi" in banner and "prediction" in banner
    wait_until(lambda: httpx.get(f"{plot}/plot/drift.png").status_code == 200, 30, "the drift chart")
    page.screenshot(tmp_path / "dashboard-drift.png", full_page=True)
    print(f"dashboard screenshot: {tmp_path / 'dashboard-drift.png'}")
    assert page.exceptions() == []

    wait_until(lambda: gauges(pipeline).get(("model_drift_alert",)) == 1.0, 10, "the drift alert gauge")
    metrics = gauges(pipeline)
    assert metrics[("model_drift_detected", "bmi")] == 1.0 and metrics[("model_drift_detected", "age")] == 0.0
    wait_until(lambda: webhook.posted, 10, "the drift alert to be posted")
    assert [(p["alert"], p["service"], set(p["drift"])) for p in webhook.posted] == [
        ("raised", "model_api", {"bmi", "prediction"})
    ]

    pipeline.wait_all_joined()  # the labels of the shifted samples are in: the error shows it
    mae_after = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()["windows"]["last_100"]["mae"]
    assert mae_after > mae_before, (mae_before, mae_after)

    assert httpx.delete(f"{features}/features/scenario").json()["active"] is False
    pipeline.burst(WINDOW)
    wait_until(functools.partial(seen, pipeline, 3 * WINDOW), 30, "model_api to see the calm samples again")
    wait_until(lambda: drift(pipeline)["drifted"] == [], 5, "drift to clear once the window is calm again")
    wait_until(lambda: len(webhook.posted) == 2, 10, "the cleared alert to be posted")
    assert webhook.posted[1]["alert"] == "cleared"
