"""The soak bench still runs: ``python -m bench.soak --smoke`` (30,000 predictions, the bounds a few
seconds) ends well, the state reached its bound, and the restarts agree with the CSV (rotated into
several files)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import REPO_ROOT

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.mark.timeout(330)
@pytest.mark.usefixtures("amqp_url")  # fails at once, saying why, when no broker answers
def test_the_smoke_run_of_the_soak_passes(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--smoke", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert "| state MB |" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["problems"] == [] and figures["refused_requests"] == 0
    assert figures["predictions"] == 30_000 and figures["labels"] == 6_000
    last = figures["samples"][-1]
    assert last["rows"] == 6_000  # every label made its row
    assert last["expired"] > 0  # the unlabelled predictions left the state for the archive
    assert (tmp_path / "work" / "logs" / "expired_halves.log").exists()
    after = figures["after"]
    assert (
        after["statistics_equal_recomputation"] and after["charts_equal_before_restart"] and after["charts_equal_after_full_read"]
    )
    assert set(after["start_s_snapshot"]) == set(after["start_s_full_read"]) == {"metric_api", "plot_api"}
    assert after["csv_files"] > 1  # metric_log.csv was rotated (--log-max-bytes): the statistics span the files
