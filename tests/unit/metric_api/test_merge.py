"""python -m services.metric_api.merge: the shards' CSVs as one, one header, one row per id."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import REPO_ROOT

HEADER = "id,y_true,y_pred,absolute_error\n"


def run(*args: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.metric_api.merge", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "shard0.csv", tmp_path / "shard1.csv"
    a.write_text(HEADER + "1.000001,151.0,150.5,0.5\n1.000003,75.0,80.25,5.25\n")
    b.write_text(HEADER + "1.000002,200.0,190.0,10.0\n")
    return a, b


def test_two_shards_make_one_csv_with_one_header(tmp_path: Path, shards: tuple[Path, Path]) -> None:
    out = tmp_path / "all" / "metric_log.csv"
    done = run(out, *shards)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == HEADER + "1.000001,151.0,150.5,0.5\n1.000003,75.0,80.25,5.25\n1.000002,200.0,190.0,10.0\n"
    assert "merged 3 rows from 2 files" in done.stdout


def test_the_same_row_twice_is_written_once(tmp_path: Path, shards: tuple[Path, Path]) -> None:
    out = tmp_path / "out.csv"
    done = run(out, shards[0], shards[1], shards[0])
    assert done.returncode == 0, done.stderr
    assert out.read_text().count("1.000001,") == 1 and len(out.read_text().splitlines()) == 4
    assert "2 rows found twice, the same, written once" in done.stdout


def test_a_conflicting_duplicate_is_refused_and_nothing_written(tmp_path: Path, shards: tuple[Path, Path]) -> None:
    other = tmp_path / "other.csv"
    other.write_text(HEADER + "1.000003,75.0,81.0,6.0\n")
    out = tmp_path / "out.csv"
    done = run(out, *shards, other)
    assert done.returncode == 1
    assert "id 1.000003 has two different rows" in done.stderr
    assert f"{shards[0]} line 3" in done.stderr and f"{other} line 2" in done.stderr
    assert not out.exists()


def test_an_unfinished_last_line_is_left_out_and_said(tmp_path: Path, shards: tuple[Path, Path]) -> None:
    with shards[1].open("a") as f:
        f.write("1.000004,1.0,2")
    out = tmp_path / "out.csv"
    done = run(out, *shards)
    assert done.returncode == 0 and "1.000004" not in out.read_text()
    assert f"{shards[1]} ends in an unfinished line" in done.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,y_true\n1,2\n", "not the header"),
        (HEADER + "1.5,abc,2.0,1.0\n", "line 2 is not a metric row"),
        ("", "starts with nothing"),
    ],
)
def test_a_file_that_is_not_a_metric_log_is_refused(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    done = run(tmp_path / "out.csv", bad)
    assert done.returncode == 1 and message in done.stderr and str(bad) in done.stderr


def test_writing_over_a_shard_or_reading_a_missing_file_is_refused(tmp_path: Path, shards: tuple[Path, Path]) -> None:
    done = run(shards[0], *shards)
    assert done.returncode == 2 and "is one of the shards' files" in done.stderr
    done = run(tmp_path / "out.csv", tmp_path / "missing.csv")
    assert done.returncode == 1 and "cannot read" in done.stderr and "missing.csv" in done.stderr
