"""model_api's drift watch: refusals classified by reason, the gauges and the drift alert's webhook
(to a local stand-in receiver, in the one payload shape of every alert) brought up to date by ``check``."""

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from sklearn.datasets import load_diabetes

from services.common.messages import SCHEMA_CONTEXT, FeaturesMessage
from services.common.schema import DIABETES
from services.common.settings import Settings
from services.model_api.drift_watch import DriftWatch, refusal_kind
from services.model_api.modelstore import load_model
from tests.json_stub import JsonStub

DATA = load_diabetes().data


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("[NaN,0,0,0,0,0,0,0,0,0]", "non_finite"),
        ("[0,0,0,0,0,0,0,0,0,-Infinity]", "non_finite"),
        ("[0,0,0,0,0,0,0,0,0,1e13]", "out_of_range"),
        ("[0,0,0,0,0,0,0,0,0]", "feature_count"),
        ("[0,0,0,0,0,0,0,0,0,0,0]", "feature_count"),
        ('["0",0,0,0,0,0,0,0,0,0]', "wrong_type"),
        ('{"age": 0}', "missing_feature"),
        (
            '{"age": 0, "sex": 0, "bmi": 0, "bp": 0, "s1": 0, "s2": 0, "s3": 0, "s4": 0, "s5": 0, "s6": 0, "s7": 0}',
            "unknown_feature",
        ),
        ('"0,0,0"', "not_a_body"),
    ],
)
def test_a_refused_features_message_is_classified_by_reason(body: str, kind: str) -> None:
    with pytest.raises(ValidationError) as refused:
        FeaturesMessage.model_validate_json(f'{{"id": "1.5", "body": {body}}}', context={SCHEMA_CONTEXT: DIABETES})
    assert refusal_kind(refused.value.errors(include_url=False)) == kind


def test_a_message_without_features_or_with_a_bad_id_is_another_refusal() -> None:
    for raw in ('{"id": "1.5"}', '{"id": "a b", "body": [0,0,0,0,0,0,0,0,0,0]}'):
        with pytest.raises(ValidationError) as refused:
            FeaturesMessage.model_validate_json(raw, context={SCHEMA_CONTEXT: DIABETES})
        assert refusal_kind(refused.value.errors()) == "other"


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_check_sets_the_gauges_and_posts_each_alert_change_once(model_path: Path) -> None:
    rng = np.random.default_rng(8)
    bmi = 2

    async def scenario(receiver: JsonStub) -> None:
        settings = Settings(MODEL_PATH=model_path, DRIFT_WINDOW_SIZE=100, ALERT_WEBHOOK_URL=receiver.url)
        model = load_model(model_path)
        watch = DriftWatch(settings, model)
        shifted = DATA[rng.integers(442, size=100)]
        shifted[:, bmi] += 2 * DATA[:, bmi].std()
        watch.observe(shifted.tolist(), model.serving.predict(shifted.tolist()))
        watch.check(time.time())
        assert gauge("model_drift_detected", feature="bmi") == 1.0 and gauge("model_drift_alert") == 1.0
        assert gauge("model_drift_detected", feature="age") == 0.0
        assert gauge("model_drift_window_samples") == 100.0 and gauge("model_drift_available") == 1.0
        report = watch.report(time.time())
        assert gauge("model_drift_statistic", feature="bmi", method="psi") == report["features"]["bmi"]["psi"]
        watch.check(time.time())  # nothing new: no second change
        calm = DATA[rng.integers(442, size=100)]
        watch.observe(calm.tolist(), model.serving.predict(calm.tolist()))
        watch.monitor.reassess_s = 0  # assess the new window now, not a second later
        watch.check(time.time())
        assert gauge("model_drift_alert") == 0.0 and gauge("model_drift_detected", feature="bmi") == 0.0
        await watch.stop()  # lets the webhook deliver what is queued

    with JsonStub("/hook") as receiver:
        asyncio.run(scenario(receiver))
    assert [(post["alert"], post["state"], post["service"], "bmi" in post["details"]["drifted"]) for post in receiver.posted] == [
        ("drift", "raised", "model_api", True),
        ("drift", "cleared", "model_api", False),
    ]
    raised = receiver.posted[0]
    assert set(raised) == {"alert", "state", "service", "at", "since", "summary", "details"}  # the one shape of every alert
    assert "bmi" in raised["summary"] and raised["since"] == raised["at"]
