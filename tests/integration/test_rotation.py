"""metric_log.csv rotated by size (METRIC_LOG_MAX_BYTES) while the real pipeline writes it, on the real
broker: every id exactly once over the files, the header in each; metric_api's summary what pandas
says of the files one after the other, and the same after a restart without snapshot and after a
rotation cut short by a crash (the rename done, the new file not begun); plot_api's rows follow
(locally, and over HTTP by generation with the join in shards); merge over rotated shards."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from harness.checker import check
from harness.cluster import merged_count, running_sharded, shard_csvs, verdict
from harness.pipeline import ROW_CHART_ROUTES, Pipeline, running_pipeline
from harness.processes import ServiceProcess, wait_until
from services.common.files import METRIC_LOG, METRIC_SNAPSHOT, PLOT_SNAPSHOT, rotated_metric_log, rotated_metric_logs
from services.common.metric_rows import METRIC_LOG_HEADER
from tests.integration.test_metric_summary import assert_agrees_with_the_csv, training_mean

pytestmark = [pytest.mark.broker, pytest.mark.slow]

MAX_BYTES = 16_384  # a few hundred rows a file: a few thousand samples rotate it many times
SAMPLES = 3_000


def plot_rows_read(pipeline: Pipeline) -> float:
    metrics = httpx.get(f"{pipeline.url('plot_api')}/metrics").text
    found = re.search(r"^plot_rows_read (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


def chart_etags(pipeline: Pipeline) -> dict[str, str]:
    return {route: answer.headers["etag"] for route, answer in pipeline.settled_charts(routes=ROW_CHART_ROUTES).items()}


def assert_each_file_a_metric_log(logs: Path) -> list[Path]:
    """The files, oldest first, as `ls logs/metric_log*.csv` lists them: numbered from 1 up, the header in each."""
    files = sorted(logs.glob("metric_log*.csv"))
    assert files[-1].name == METRIC_LOG
    assert [path.name for path in files[:-1]] == [rotated_metric_log(logs, n).name for n in range(1, len(files))]
    for path in files:
        assert path.read_text().split("\n", 1)[0] == METRIC_LOG_HEADER, path
    return files


def restarted_without_snapshot(pipeline: Pipeline, key: str, snapshot: str) -> str:
    """Stop the service, delete its snapshot, start it again; what it logged this time."""
    old = pipeline.services[key]
    old.stop(signal.SIGTERM)
    (pipeline.logs_dir / snapshot).unlink(missing_ok=True)
    logged = len(old.output())
    pipeline.services[key] = ServiceProcess(old.name, old.env, pipeline.logs_dir, old.cwd).start()
    pipeline.services[key].wait_healthy()
    return pipeline.services[key].output()[logged:]


def test_a_stream_rotated_many_times_keeps_every_row_once_and_every_statistic(
    tmp_path: Path, model_path: Path, amqp_url: str
) -> None:
    with running_pipeline(tmp_path, model_path, amqp_url, METRIC_LOG_MAX_BYTES=str(MAX_BYTES)) as pipeline:
        ids = pipeline.burst(SAMPLES, timeout=120)
        rows = pipeline.wait_all_joined(timeout=120)  # every file of the log
        files = assert_each_file_a_metric_log(pipeline.logs_dir)
        assert len(files) >= 6
        verdict_ = check(ids, pipeline.csv)
        assert verdict_.exact and verdict_.rows == SAMPLES, verdict_
        version = httpx.get(f"{pipeline.url('model_api')}/model/info").json()["model_version"]
        versions = dict.fromkeys(rows["id"], version)
        baseline = training_mean(model_path)
        summary = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()
        assert_agrees_with_the_csv(summary, rows, baseline, versions)
        rotations = httpx.get(f"{pipeline.url('metric_api')}/metrics").text
        assert f"metric_log_rotations_total {len(files) - 1}.0" in rotations
        wait_until(lambda: plot_rows_read(pipeline) == SAMPLES, 30, "plot_api to read every row of every file")
        time.sleep(3)  # the charts of the last rows drawn (three charts can take seconds on a busy machine)
        charts = chart_etags(pipeline)

        # Restarts without a snapshot: the full read takes every file, oldest first.
        logged = restarted_without_snapshot(pipeline, "metric_api", METRIC_SNAPSHOT)
        assert "started from" not in logged
        summary = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()
        assert_agrees_with_the_csv(summary, rows, baseline, versions)
        restarted_without_snapshot(pipeline, "plot_api", PLOT_SNAPSHOT)
        wait_until(lambda: plot_rows_read(pipeline) == SAMPLES, 30, "plot_api to read every row again")
        wait_until(lambda: chart_etags(pipeline) == charts, 30, "the same charts from the full read of every file")

        # A crash between the rename and the new file: the rotated file whole, metric_log.csv gone.
        pipeline.services["metric_api"].stop(signal.SIGKILL)
        generation = rotated_metric_logs(pipeline.logs_dir)[-1][0] + 1
        pipeline.csv.rename(rotated_metric_log(pipeline.logs_dir, generation))
        pipeline.restart("metric_api", signal.SIGKILL)
        more = pipeline.burst(500)
        rows = pipeline.wait_all_joined(timeout=120)
        assert_each_file_a_metric_log(pipeline.logs_dir)
        verdict_ = check(ids + more, pipeline.csv)
        assert verdict_.exact and verdict_.rows == SAMPLES + 500, verdict_
        summary = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()
        assert_agrees_with_the_csv(summary, rows, baseline, dict.fromkeys(rows["id"], version))
        wait_until(lambda: plot_rows_read(pipeline) == SAMPLES + 500, 30, "plot_api to follow past the cut-short rotation")


def test_rotated_shards_are_followed_over_http_and_merged_with_every_row_once(
    tmp_path: Path, model_path: Path, amqp_url: str
) -> None:
    with running_sharded(tmp_path, model_path, amqp_url, shards=2, METRIC_LOG_MAX_BYTES=str(MAX_BYTES)) as pipeline:
        ids = pipeline.burst(SAMPLES, timeout=120)
        wait_until(lambda: verdict(pipeline, ids).rows >= SAMPLES, 120, f"rows for all {SAMPLES} ids")
        result = verdict(pipeline, ids)
        assert (result.lost, result.duplicated, result.unexpected) == (0, 0, 0), result
        for csv in shard_csvs(pipeline):
            assert len(assert_each_file_a_metric_log(csv.parent)) >= 4
        wait_until(lambda: merged_count(pipeline) == SAMPLES, 30, f"plot_api's merged count to reach {SAMPLES}")
        assert plot_rows_read(pipeline) == SAMPLES

        out = tmp_path / "merged.csv"
        merged = subprocess.run(
            [sys.executable, "-m", "services.metric_api.merge", str(out), *map(str, shard_csvs(pipeline))],
            capture_output=True,
            text=True,
            check=False,
        )
        assert merged.returncode == 0, merged.stderr
        rows = pd.read_csv(out, dtype={"id": str})
        assert sorted(rows["id"]) == sorted(ids) and rows["id"].is_unique
