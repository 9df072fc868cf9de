from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from services.common.metric_rows import MetricRow, format_row, format_rows
from services.metric_api.csvlog import MetricLog, MetricLogError, append_with_header

HEADER = "id,y_true,y_pred,absolute_error"
# Open a MetricLog on a path; give it back with the rows already in the file.
OpenLog = Callable[[Path], tuple[MetricLog, list[MetricRow]]]


@pytest.fixture
def logs() -> Iterator[list[MetricLog]]:
    """MetricLogs a test opens; all closed afterwards, even when the test fails."""
    opened: list[MetricLog] = []
    yield opened
    for log in opened:
        log.close()


@pytest.fixture
def open_log(logs: list[MetricLog]) -> OpenLog:
    def factory(path: Path) -> tuple[MetricLog, list[MetricRow]]:
        log = MetricLog(path)
        logs.append(log)
        log.open_for_append()
        return log, list(log.rows())

    return factory


def rows(n: int, start: int = 0) -> list[MetricRow]:
    return [MetricRow.of(f"{1669147134 + i}.{i:06d}", 100.0 + i / 3, 90.0 + i / 7) for i in range(start, start + n)]


def test_a_new_file_gets_exactly_the_header(tmp_path: Path, open_log: OpenLog) -> None:
    path = tmp_path / "logs" / "metric_log.csv"
    _, existing = open_log(path)
    assert existing == []
    assert path.read_bytes() == (HEADER + "\n").encode()


def test_an_empty_existing_file_gets_the_header(tmp_path: Path, open_log: OpenLog) -> None:
    path = tmp_path / "metric_log.csv"
    path.touch()
    _, existing = open_log(path)
    assert existing == []
    assert path.read_text() == HEADER + "\n"


def test_appended_rows_read_back_equal(tmp_path: Path, open_log: OpenLog) -> None:
    path = tmp_path / "metric_log.csv"
    log, _ = open_log(path)
    written = rows(20)
    log.append(written[:1])
    log.append(written[1:])
    _, read_back = open_log(path)
    assert read_back == written


def test_the_file_is_plain_csv_with_one_line_per_row(tmp_path: Path, open_log: OpenLog) -> None:
    path = tmp_path / "metric_log.csv"
    log, _ = open_log(path)
    log.append([MetricRow.of("1669147134.196809", 151.0, 150.5)])
    assert path.read_text() == f"{HEADER}\n1669147134.196809,151.0,150.5,0.5\n"


def test_reopening_keeps_the_rows_and_appends_after_them(tmp_path: Path, open_log: OpenLog) -> None:
    path = tmp_path / "metric_log.csv"
    first, _ = open_log(path)
    first.append(rows(3))
    first.close()
    second, existing = open_log(path)
    assert existing == rows(3)
    second.append(rows(2, start=3))
    _, all_rows = open_log(path)
    assert all_rows == rows(5)


def test_appending_nothing_changes_nothing(tmp_path: Path, open_log: OpenLog) -> None:
    path = tmp_path / "metric_log.csv"
    log, _ = open_log(path)
    log.append([])
    assert path.read_text() == HEADER + "\n"


def test_a_torn_last_line_is_removed_and_the_rest_kept(tmp_path: Path, open_log: OpenLog) -> None:
    path = tmp_path / "metric_log.csv"
    complete = rows(3)
    path.write_text(HEADER + "\n" + format_rows(complete) + "1669147200.000001,151.0,15")
    log, existing = open_log(path)
    assert existing == complete
    assert path.read_text() == HEADER + "\n" + format_rows(complete)
    # The row whose line was torn is redelivered and written whole after the repair.
    log.append([MetricRow.of("1669147200.000001", 151.0, 150.0)])
    _, after = open_log(path)
    assert after == [*complete, MetricRow.of("1669147200.000001", 151.0, 150.0)]


def test_a_torn_last_line_with_only_the_header_before_it(tmp_path: Path, open_log: OpenLog) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER + "\n1669147200.0000")
    _, existing = open_log(path)
    assert existing == []
    assert path.read_text() == HEADER + "\n"


def test_a_long_torn_tail_does_not_lose_the_complete_rows(tmp_path: Path, open_log: OpenLog) -> None:
    # A crash can leave a file ending in a block of NUL bytes (delayed allocation on
    # ext4/XFS): one torn "line" of 4096 bytes or more with no newline in it.
    path = tmp_path / "metric_log.csv"
    complete = rows(100)
    path.write_bytes((HEADER + "\n" + format_rows(complete)).encode() + b"\0" * 4096)
    _, existing = open_log(path)
    assert existing == complete
    assert path.read_text() == HEADER + "\n" + format_rows(complete)


def test_a_torn_header_is_replaced_by_a_whole_one(tmp_path: Path, open_log: OpenLog) -> None:
    # The crash came while the header itself was being written.
    path = tmp_path / "metric_log.csv"
    path.write_text("id,y_tr")
    _, existing = open_log(path)
    assert existing == []
    assert path.read_text() == HEADER + "\n"


def test_a_wrong_header_is_refused_naming_the_file(tmp_path: Path, open_log: OpenLog) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text("id, y_true, y_pred, absolute_error\n1,2.0,3.0,1.0\n")
    with pytest.raises(MetricLogError, match=r"metric_log\.csv") as exc:
        open_log(path)
    assert "header" in str(exc.value)
    # Nothing was written to the file that was refused.
    assert path.read_text() == "id, y_true, y_pred, absolute_error\n1,2.0,3.0,1.0\n"


@pytest.mark.parametrize(
    ("bad_line", "why"),
    [
        ("1669147134.000002,abc,3.0,1.0", "not a number"),
        ("1669147134.000002,2.0,3.0", "three fields"),
        ("1669147134.000002,2.0,3.0,1.0,9", "five fields"),
        ("", "blank line"),
    ],
)
def test_a_garbage_line_is_refused_with_its_line_number(
    tmp_path: Path,
    open_log: OpenLog,
    bad_line: str,
    why: str,
) -> None:
    path = tmp_path / "metric_log.csv"
    good = format_rows(rows(3))
    path.write_text(HEADER + "\n" + good + bad_line + "\n" + format_row(rows(1, start=9)[0]))
    with pytest.raises(MetricLogError) as exc:
        open_log(path)
    message = str(exc.value)
    assert "metric_log.csv" in message, why
    assert "line 5" in message, why  # header is line 1, three good rows, then the bad one


def test_append_before_open_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    with pytest.raises(MetricLogError, match=r"metric_log\.csv"):
        MetricLog(path).append(rows(1))
    assert not path.exists()


def test_append_after_close_is_refused(tmp_path: Path, open_log: OpenLog) -> None:
    path = tmp_path / "metric_log.csv"
    log, _ = open_log(path)
    log.close()
    with pytest.raises(MetricLogError):
        log.append(rows(1))
    assert path.read_text() == HEADER + "\n"


# --- append_with_header (orphans.csv) --------------------------------------------------

ORPHAN_HEADER = "id,kind,value,arrived_at"


def test_append_with_header_writes_the_header_once_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "orphans.csv"
    append_with_header(path, ORPHAN_HEADER, ["1669147134.196809,y_true,151.0,1669147134.5\n"])
    assert path.read_text() == ORPHAN_HEADER + "\n1669147134.196809,y_true,151.0,1669147134.5\n"
    append_with_header(
        path,
        ORPHAN_HEADER,
        ["1669147135.000001,y_pred,150.37,1669147135.25\n", "1669147136.000002,y_true,0.30000000000000004,1669147136.0\n"],
    )
    append_with_header(path, ORPHAN_HEADER, [])
    assert path.read_text() == (
        "id,kind,value,arrived_at\n"
        "1669147134.196809,y_true,151.0,1669147134.5\n"
        "1669147135.000001,y_pred,150.37,1669147135.25\n"
        "1669147136.000002,y_true,0.30000000000000004,1669147136.0\n"
    )

    frame = pd.read_csv(path, dtype={"id": str, "kind": str})
    assert list(frame.columns) == ["id", "kind", "value", "arrived_at"]
    assert frame["id"].tolist() == ["1669147134.196809", "1669147135.000001", "1669147136.000002"]
    assert frame["kind"].tolist() == ["y_true", "y_pred", "y_true"]
    assert frame["value"].tolist() == [151.0, 150.37, 0.1 + 0.2]
    assert frame["arrived_at"].tolist() == [1669147134.5, 1669147135.25, 1669147136.0]


def test_append_with_header_on_an_existing_empty_file_writes_the_header(tmp_path: Path) -> None:
    path = tmp_path / "orphans.csv"
    path.touch()
    append_with_header(path, ORPHAN_HEADER, ["1.000001,y_pred,2.5,3.0\n"])
    assert path.read_text() == ORPHAN_HEADER + "\n1.000001,y_pred,2.5,3.0\n"


def test_append_with_header_does_not_repeat_the_header_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "orphans.csv"
    path.write_text(ORPHAN_HEADER + "\n1.000001,y_true,1.0,1.0\n")
    append_with_header(path, ORPHAN_HEADER, ["1.000002,y_pred,2.0,2.0\n"])
    assert path.read_text().count(ORPHAN_HEADER) == 1
    assert len(pd.read_csv(path)) == 2


def test_changed_says_how_the_path_no_longer_names_the_file_being_written(tmp_path: Path, open_log: OpenLog) -> None:
    path = tmp_path / "metric_log.csv"
    log, _ = open_log(path)
    log.append(rows(3))
    assert log.changed() is None  # its own appends are not a change
    size = path.stat().st_size
    with path.open("a") as f:
        f.write("someone else's line\n")
    assert log.changed() == f"{path} was written to by another program (20 bytes this service did not write)"
    with path.open("rb+") as f:
        f.truncate(size - 10)
    assert log.changed() == f"{path} was truncated (from {size} to {size - 10} bytes)"
    path.unlink()
    assert log.changed() == f"{path} was deleted or moved away"
    path.write_text(HEADER + "\n")
    assert log.changed() == f"{path} was replaced by another file"
