"""FASTPATH_OFF on the real services and broker: with every fast part off, aiormq's public path
publishes with confirms and consumes, and every sample still makes exactly one row."""

from pathlib import Path

import pytest

from harness.checker import check
from harness.pipeline import running_pipeline
from harness.processes import free_port, run_to_exit, service_env

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SAMPLES = 3_000  # several publish batches (500 samples each) and consumer batches on every queue


def test_with_every_fast_part_off_every_sample_makes_exactly_one_row(tmp_path: Path, model_path: Path, amqp_url: str) -> None:
    with running_pipeline(tmp_path, model_path, amqp_url, FASTPATH_OFF="all") as pipeline:
        ids = pipeline.burst(SAMPLES)
        pipeline.wait_all_joined(timeout=120)
        verdict = check(ids, pipeline.csv)
        logs = {name: service.output() for name, service in pipeline.services.items()}
    assert (verdict.published, verdict.lost, verdict.duplicated, verdict.unexpected) == (SAMPLES, 0, 0, 0)
    # The services that talk AMQP said that the public path served them (the setting reached them).
    said = "FASTPATH_OFF=all turns off publish (a batch of publishes in one write); deliveries"
    assert {name for name, text in logs.items() if said in text} == {"features_api", "model_api", "metric_api"}


def test_a_service_refuses_to_start_with_a_fastpath_off_that_names_no_part() -> None:
    result = run_to_exit("features_api", service_env(FASTPATH_OFF="publish,inline", FEATURES_PORT=str(free_port())))
    assert result.returncode != 0
    assert "FASTPATH_OFF: 'inline' is not a part of fastpath; the parts are publish, deliveries, frames" in (result.stderr)
