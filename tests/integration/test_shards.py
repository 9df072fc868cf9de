"""The join split into two shards on the single broker (METRIC_SHARDS=2): every id exactly once
over both shards' CSVs, each shard a fair share, a standby metric_api of one shard that takes
over when the active one is killed (kill -9), plot_api's one view over both, and services that
disagree on METRIC_SHARDS refused loudly."""

import signal
import time
from pathlib import Path

import httpx
import pytest

from harness.cluster import merged_count, rows_per_shard, running_sharded, start_standby, verdict
from harness.pipeline import Pipeline
from harness.processes import ServiceProcess, free_port, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SHARDS = 2
BURST = 1_000


def wait_exactly_once(pipeline: Pipeline, ids: list[str], timeout: float = 120) -> None:
    wait_until(lambda: verdict(pipeline, ids).rows >= len(set(ids)), timeout, f"rows for all {len(set(ids))} ids")
    time.sleep(1)  # a duplicate would come right behind
    result = verdict(pipeline, ids)
    assert (result.lost, result.duplicated, result.unexpected) == (0, 0, 0), result


def health(service: ServiceProcess) -> dict:
    answer = service.health()
    assert answer is not None and answer.status_code == 200, service.output()[-2000:]
    body: dict = answer.json()
    return body


def test_two_shards_share_the_ids_and_a_standby_takes_over_without_loss(tmp_path: Path, model_path: Path, amqp_url: str) -> None:
    with running_sharded(tmp_path, model_path, amqp_url, shards=SHARDS) as pipeline:
        # Each shard's queues: one consumer (its metric_api) each; the fences hold nothing.
        queues = pipeline.queues()
        assert queues["y_true.shard0of2"][1] == queues["y_pred.shard1of2"][1] == 1, queues
        assert queues["y_true"] == (0, 0), queues

        ids = pipeline.burst(BURST)
        wait_exactly_once(pipeline, ids)
        shares = rows_per_shard(pipeline)
        assert sum(shares) == BURST and all(share > 0.4 * BURST for share in shares), shares
        roles = [health(pipeline.services[key]) for key in ("metric_api", "metric_api-1")]
        assert [(h["shard"], h["shards"], h["role"]) for h in roles] == [(0, 2, "active"), (1, 2, "active")]

        # One view: plot_api's summary counts the rows of both shards, over HTTP.
        wait_until(lambda: merged_count(pipeline) == BURST, 30, f"plot_api's merged count to reach {BURST}")
        summary = httpx.get(f"{pipeline.url('plot_api')}/api/summary", timeout=10).json()
        assert summary["missing"] == [] and [s["count"] for s in summary["shards"]] == shares
        pipeline.settled_charts()

        # A second metric_api of shard 1: connected and healthy, standing by.
        standby = start_standby(pipeline, 1)
        assert pipeline.queues()["y_true.shard1of2"][1] == 2
        more = pipeline.burst(BURST)
        wait_exactly_once(pipeline, ids + more)
        assert health(standby)["role"] == "standby", "the broker gave shard 1's halves to both of its metric_api's"

        # The active one of shard 1 killed mid-burst: the standby takes over, nothing lost or twice.
        pipeline.services["metric_api-1"].stop(signal.SIGKILL)
        last = pipeline.burst(BURST)
        wait_exactly_once(pipeline, ids + more + last, timeout=180)
        assert health(standby)["role"] == "active"
        # Restarted as a supervisor would, on its address: now the standby, it serves the shard's rows.
        killed = pipeline.services["metric_api-1"]
        pipeline.services["metric_api-1"] = ServiceProcess("metric_api", killed.env, killed.log_path.parent).start()
        pipeline.services["metric_api-1"].wait_healthy()
        assert health(pipeline.services["metric_api-1"])["role"] == "standby"
        assert wait_until(lambda: merged_count(pipeline) == 3 * BURST, 30, "plot_api's merged count after the takeover")

        # A shard down: the view says which is missing, and still answers.
        pipeline.services["metric_api"].stop()
        summary = wait_until(
            lambda: (
                (s := httpx.get(f"{pipeline.url('plot_api')}/api/summary", timeout=10)).status_code == 200
                and s.json()["missing"]
                and s.json()
            ),
            20,
            "the summary to name the shard that is down",
        )
        assert summary["missing"] == [pipeline.services["metric_api"].url]
        assert summary["count"] == 3 * BURST  # its rows were read before it went


@pytest.mark.parametrize("shards", ["3", "1"])
def test_a_service_with_another_metric_shards_is_refused_loudly(
    tmp_path: Path, model_path: Path, amqp_url: str, shards: str
) -> None:
    """Three shards, or one (the unsharded queues), against a two-shard deployment: refused at its
    declarations (the fence), and its /health says so, instead of halves sent where no join takes them."""
    with running_sharded(tmp_path, model_path, amqp_url, shards=SHARDS) as pipeline:
        env = {
            **pipeline.services["metric_api"].env,
            "METRIC_SHARDS": shards,
            "METRIC_SHARD": "0",
            "METRIC_PORT": str(free_port()),
        }
        log_dir = tmp_path / "mismatch"
        (log_dir / "logs").mkdir(parents=True)
        stray = ServiceProcess("metric_api", {**env, "LOGS_DIR": str(log_dir / "logs")}, log_dir).start()
        try:
            answer = wait_until(
                lambda: (a := stray.health()) is not None and "PRECONDITION_FAILED" in a.text and a, 30, "a loud refusal"
            )
            assert answer.status_code == 503 and "METRIC_SHARDS" in answer.json()["reason"], answer.text
        finally:
            stray.stop()
        assert len(pipeline.burst(10)) == 10  # the deployment itself goes on
