import io
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.plot_api.tail import MetricLogTail

HEADER = "id,y_true,y_pred,absolute_error\n"


def line(i: int, y_true: float, y_pred: float) -> str:
    return f"{1669147134 + i}.{i:06d},{y_true!r},{y_pred!r},{abs(y_true - y_pred)!r}\n"


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def test_a_missing_file_reads_as_nothing(tmp_path: Path) -> None:
    tail = MetricLogTail(tmp_path / "metric_log.csv")
    assert tail.read_new() == 0
    assert tail.count == 0
    assert tail.recent_errors().size == 0


def test_a_header_only_file_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER)
    tail = MetricLogTail(path)
    assert tail.read_new() == 0
    assert tail.count == 0 and tail.skipped_lines == 0


def test_lines_written_one_by_one_are_read_as_they_complete(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER)
    tail = MetricLogTail(path)
    expected: list[float] = []
    for i in range(30):
        y_true, y_pred = 100.0 + i, 95.5 + 2 * i
        text = line(i, y_true, y_pred)
        append(path, text[:7])  # the writer is part-way through the line
        assert tail.read_new() == 0
        assert tail.count == len(expected)
        append(path, text[7:])
        assert tail.read_new() == 1
        expected.append(abs(y_true - y_pred))
        assert tail.recent_errors().tolist() == expected
        assert tail.last_id == f"{1669147134 + i}.{i:06d}"
    assert tail.skipped_lines == 0


def test_a_line_missing_only_its_newline_is_not_read_yet(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER + line(0, 10.0, 12.0) + line(1, 10.0, 15.0).rstrip("\n"))
    tail = MetricLogTail(path)
    assert tail.read_new() == 1
    assert tail.recent_errors().tolist() == [2.0]
    append(path, "\n")
    assert tail.read_new() == 1
    assert tail.recent_errors().tolist() == [2.0, 5.0]


def test_a_torn_header_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER[:10])
    tail = MetricLogTail(path)
    assert tail.read_new() == 0
    append(path, HEADER[10:] + line(0, 1.0, 4.0))
    assert tail.read_new() == 1
    assert tail.recent_errors().tolist() == [3.0]
    assert tail.skipped_lines == 0


def test_reading_again_without_change_returns_zero(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER + line(0, 1.0, 2.0) + line(1, 3.0, 1.0))
    tail = MetricLogTail(path)
    assert tail.read_new() == 2
    assert tail.read_new() == 0
    assert tail.read_new() == 0
    assert tail.recent_errors().tolist() == [1.0, 2.0]


def test_a_replaced_file_is_read_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER + line(0, 1.0, 2.0) + line(1, 3.0, 1.0))
    tail = MetricLogTail(path)
    assert tail.read_new() == 2
    replacement = tmp_path / "new.csv"
    replacement.write_text(HEADER + line(5, 10.0, 20.0) + line(6, 10.0, 40.0) + line(7, 10.0, 50.0))
    replacement.replace(path)
    assert tail.read_new() == 3
    assert tail.recent_errors().tolist() == [10.0, 30.0, 40.0]
    assert tail.last_id == f"{1669147134 + 7}.{7:06d}"


def test_a_truncated_file_is_read_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER + "".join(line(i, 100.0, 100.0 + i) for i in range(10)))
    tail = MetricLogTail(path)
    assert tail.read_new() == 10
    with path.open("w", encoding="utf-8") as f:  # same file, cut short and rewritten
        f.write(HEADER + line(0, 7.0, 9.0))
    assert tail.read_new() == 1
    assert tail.recent_errors().tolist() == [2.0]


def test_a_garbage_line_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER + line(0, 1.0, 2.0) + "this is not a row\n" + "1.0,2.0,3.0,abc\n" + line(1, 5.0, 1.0))
    tail = MetricLogTail(path)
    assert tail.read_new() == 2
    assert tail.skipped_lines == 2
    assert tail.recent_errors().tolist() == [1.0, 4.0]
    assert tail.last_id == f"{1669147134 + 1}.{1:06d}"


def test_errors_equal_the_column_read_by_pandas(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    y_true = rng.uniform(25, 346, 3000)
    y_pred = y_true + rng.normal(0, 55, 3000)
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER)
    tail = MetricLogTail(path)
    text = "".join(line(i, float(t), float(p)) for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)))
    # Appended in uneven chunks that cut lines anywhere, reading after each.
    cuts = sorted(rng.choice(len(text), size=40, replace=False).tolist())
    for start, end in itertools.pairwise([0, *cuts, len(text)]):
        append(path, text[start:end])
        tail.read_new()
    expected = pd.read_csv(path)["absolute_error"].to_numpy()
    assert tail.count == 3000
    np.testing.assert_array_equal(tail.recent_errors(), expected)
    np.testing.assert_array_equal(tail.recent_errors(), np.abs(y_true - y_pred))


def test_errors_returns_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER + line(0, 1.0, 2.0))
    tail = MetricLogTail(path)
    tail.read_new()
    errors = tail.recent_errors()
    errors[0] = 999.0
    append(path, line(1, 1.0, 3.0))  # growing the buffer must not be blocked by an export
    tail.read_new()
    assert tail.recent_errors().tolist() == [1.0, 2.0]


def test_pandas_agrees_on_a_file_with_a_skipped_line(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    good = [line(i, 50.0, 50.0 + i * 0.1) for i in range(20)]
    path.write_text(HEADER + "".join(good[:10]) + "garbage\n" + "".join(good[10:]))
    tail = MetricLogTail(path)
    tail.read_new()
    clean = pd.read_csv(io.StringIO(HEADER + "".join(good)))
    np.testing.assert_array_equal(tail.recent_errors(), clean["absolute_error"].to_numpy())
    assert tail.skipped_lines == 1


def test_only_the_last_rows_are_kept_in_full(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER + "".join(line(i, 100.0 + i, 90.0 + 2 * i) for i in range(25)))
    tail = MetricLogTail(path, recent=10)
    assert tail.read_new() == 25
    y_true, y_pred, errors = tail.recent_rows()
    assert y_true.tolist() == [100.0 + i for i in range(15, 25)]
    assert y_pred.tolist() == [90.0 + 2 * i for i in range(15, 25)]
    assert errors.tolist() == [abs(10.0 - i) for i in range(15, 25)]
    assert tail.count == 25 and tail.first_recent_row == 16
    # ... while the distribution covers every row.
    assert tail.distribution.mean == sum(abs(10.0 - i) for i in range(25)) / 25


def test_the_newest_rows_time_is_its_id(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    tail = MetricLogTail(path)
    assert tail.newest_row_time() is None
    path.write_text(HEADER + "1669147134.196809,1.0,2.0,1.0\n")
    tail.read_new()
    assert tail.newest_row_time() == 1669147134.196809


def test_a_large_file_is_read_in_chunks_that_cut_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.plot_api.tail.READ_CHUNK", 100)
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER + "".join(line(i, 50.0, 50.0 + i) for i in range(200)))
    tail = MetricLogTail(path)
    assert tail.read_new() == 200
    assert tail.skipped_lines == 0
    assert tail.recent_errors().tolist() == [float(i) for i in range(200)]
    assert tail.last_id == f"{1669147134 + 199}.{199:06d}"


def test_a_row_needs_four_fields_and_a_finite_non_negative_error(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    bad = ["1.1,1.0,2.0,-1.0", "1.2,1.0,2.0,nan", "1.3,1.0,2.0,inf", "1.4,1.0,2.0,1.0,9", "1.5,1.0,2.0"]
    path.write_text(HEADER + "\n".join(bad) + "\n" + line(0, 1.0, 3.0))
    tail = MetricLogTail(path)
    assert tail.read_new() == 1
    assert tail.skipped_lines == 5
    assert tail.recent_errors().tolist() == [2.0]


def test_an_unreadable_label_or_prediction_is_nan_in_the_recent_rows(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER + "1.1,abc,2.0,1.0\n" + "1.2,1.0,?,3.0\n")
    tail = MetricLogTail(path)
    assert tail.read_new() == 2 and tail.skipped_lines == 0
    y_true, y_pred, errors = tail.recent_rows()
    assert np.isnan(y_true[0]) and y_pred[0] == 2.0
    assert y_true[1] == 1.0 and np.isnan(y_pred[1])
    assert errors.tolist() == [1.0, 3.0]


def test_the_recent_rows_are_the_last_ones_of_a_long_read(tmp_path: Path) -> None:
    path = tmp_path / "metric_log.csv"
    path.write_text(HEADER + "".join(line(i, 100.0, 100.0 + i) for i in range(30)))
    tail = MetricLogTail(path, recent=10)
    tail.read_new()
    append(path, "".join(line(i, 100.0, 100.0 + i) for i in range(30, 33)))
    tail.read_new()
    _, y_pred, errors = tail.recent_rows()
    assert errors.tolist() == [float(i) for i in range(23, 33)]
    assert y_pred.tolist() == [100.0 + i for i in range(23, 33)]
    assert tail.first_recent_row == 24 and tail.count == 33
