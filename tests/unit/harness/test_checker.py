"""harness.checker: the ids published against the rows of metric_log.csv, as metric_api writes it."""

import re
from pathlib import Path

import pytest

from harness.checker import Verdict, check
from services.common.metric_rows import MetricRow
from services.metric_api.csvlog import MetricLog

IDS = [f"1669147134.{i:06d}" for i in range(5)]


def write_log(path: Path, ids: list[str]) -> None:
    """A metric_log.csv with one row per id in ``ids`` (repeats included), written by metric_api's MetricLog."""
    log = MetricLog(path)
    log.open_for_append()
    try:
        log.append([MetricRow.of(sample_id, 100.0, 90.5) for sample_id in ids])
    finally:
        log.close()


def test_one_row_per_published_id_is_exact(tmp_path: Path) -> None:
    csv = tmp_path / "metric_log.csv"
    write_log(csv, IDS[::-1])
    verdict = check(IDS, csv)
    assert verdict == Verdict(published=5, rows=5, lost=0, duplicated=0, unexpected=0)
    assert verdict.exact


def test_lost_duplicated_and_unexpected_ids_are_each_counted(tmp_path: Path) -> None:
    csv = tmp_path / "metric_log.csv"
    stranger = "1669147135.000001"
    # IDS[3] and IDS[4] have no row; IDS[0] has three rows (two too many); a row for an id never published.
    write_log(csv, [IDS[0], IDS[1], IDS[0], IDS[2], stranger, IDS[0]])
    verdict = check(IDS, csv)
    assert verdict == Verdict(published=5, rows=6, lost=2, duplicated=2, unexpected=1)
    assert not verdict.exact


def test_before_the_file_exists_every_id_is_lost(tmp_path: Path) -> None:
    assert check(IDS, tmp_path / "metric_log.csv") == Verdict(published=5, rows=0, lost=5, duplicated=0, unexpected=0)


def test_a_last_line_still_being_written_is_not_a_row_yet(tmp_path: Path) -> None:
    csv = tmp_path / "metric_log.csv"
    write_log(csv, IDS[:2])
    with csv.open("a") as f:
        f.write(f"{IDS[2]},151.0,14")  # no newline: metric_api is mid-append
    assert check(IDS[:3], csv) == Verdict(published=3, rows=2, lost=1, duplicated=0, unexpected=0)


def test_a_line_that_is_not_a_metric_row_is_an_error_naming_the_file_and_line(tmp_path: Path) -> None:
    csv = tmp_path / "metric_log.csv"
    write_log(csv, IDS[:2])
    with csv.open("a") as f:
        f.write(f"{IDS[2]},151.0\n")
    with pytest.raises(ValueError, match=re.escape(f"{csv} line 4 is not a metric row (2 fields")):
        check(IDS, csv)


def test_a_file_without_the_header_is_an_error(tmp_path: Path) -> None:
    csv = tmp_path / "metric_log.csv"
    csv.write_text(f"{IDS[0]},151.0,150.0,1.0\n")
    with pytest.raises(ValueError, match="not the header 'id,y_true,y_pred,absolute_error'"):
        check(IDS, csv)
