"""Three model_api processes on one features queue: competing consumers, as with
`docker compose ... up --scale model_api=3` (deploy/compose.scale.yml), without Docker."""

from pathlib import Path

import pytest

from bench.replicas import predictions_by_replica
from harness.checker import check
from harness.pipeline import running_pipeline
from harness.processes import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REPLICAS = 3
BURST = 2_000


def test_three_model_replicas_share_a_burst_and_each_id_gets_one_row(tmp_path: Path, model_path: Path, amqp_url: str) -> None:
    with running_pipeline(tmp_path, model_path, amqp_url, model_replicas=REPLICAS, PLOT_INTERVAL_S="60") as pipeline:
        replicas = pipeline.replicas("model_api")
        assert len({replica.port for replica in replicas}) == REPLICAS
        # One queue, three consumers on it (the broker's own count), before any work.
        assert pipeline.queues()["features"] == (0, REPLICAS)

        ids = pipeline.burst(BURST, timeout=120)
        wanted = set(ids)
        wait_until(lambda: wanted <= set(pipeline.rows()["id"]), 180, f"rows for all {BURST} ids")

        verdict = check(ids, pipeline.csv)
        assert (verdict.lost, verdict.duplicated, verdict.unexpected) == (0, 0, 0), verdict
        assert verdict.rows == BURST

        split = predictions_by_replica(pipeline)
        # Every sample was predicted at least once, by one replica or another.
        assert sum(split.values()) >= BURST, split
        # Competing consumers with a bounded prefetch: each replica did a real share,
        # not one doing it all while the others idled (a third each would be even).
        for key, count in split.items():
            assert count >= BURST / 10, f"{key} made {count:.0f} of {BURST} predictions: {split}"
        # Each replica is healthy and still consuming after the burst.
        assert pipeline.queues()["features"][1] == REPLICAS
        for replica in replicas:
            health = replica.health()
            assert health is not None and health.status_code == 200, replica.output()[-2000:]
