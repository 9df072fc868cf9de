"""The CSV codec: a row's line, read back exactly; bad lines refused with the reason."""

import math

import pytest

from services.common.metric_rows import (
    METRIC_LOG_HEADER,
    MetricRow,
    Orphan,
    RowFormatError,
    format_columns,
    format_orphan,
    format_row,
    parse_error,
    parse_orphan,
    parse_row,
    split_line,
)

ID = "1669147134.196809"


def test_metric_row_of_computes_the_absolute_error() -> None:
    assert MetricRow.of("1", 100.0, 150.5) == MetricRow("1", 100.0, 150.5, 50.5)
    assert MetricRow.of("1", 150.5, 100.0) == MetricRow("1", 150.5, 100.0, 50.5)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "error"),
    [
        (151.0, 150.37, 0.6299999999999955),
        (0.1 + 0.2, 1 / 3, 0.03333333333333327),
        (1e-300, 5e-324, 1e-300),
        (1e17, -1e17, 2e17),
        (346.0, 346.0, 0.0),
        (25.0, 206.11666666666667, 181.11666666666667),
    ],
)
def test_a_row_line_has_four_fields_no_spaces_and_floats_that_read_back_exactly(
    y_true: float, y_pred: float, error: float
) -> None:
    line = format_row(MetricRow.of(ID, y_true, y_pred))
    assert line.endswith("\n") and line.count("\n") == 1
    assert " " not in line
    fields = line.rstrip("\n").split(",")
    assert len(fields) == 4
    assert fields[0] == ID
    assert float(fields[1]) == y_true
    assert float(fields[2]) == y_pred
    assert float(fields[3]) == error


def test_a_row_line_of_a_simple_row_is_plain_text() -> None:
    assert format_row(MetricRow.of(ID, 151.0, 150.5)) == f"{ID},151.0,150.5,0.5\n"


def test_the_header_is_the_contracts() -> None:
    assert METRIC_LOG_HEADER == "id,y_true,y_pred,absolute_error"


@pytest.mark.parametrize(("y_true", "y_pred"), [(151.0, 150.37), (0.1 + 0.2, 1 / 3), (1e17, -1e17), (25.0, 25.0)])
def test_a_row_read_back_from_its_line_is_the_same_row(y_true: float, y_pred: float) -> None:
    row = MetricRow.of(ID, y_true, y_pred)
    assert parse_row(format_row(row)) == row


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("1669147134.000002,abc,3.0,1.0", "not numbers"),
        ("1669147134.000002,2.0,3.0", "3 fields"),
        ("1669147134.000002,2.0,3.0,1.0,9", "5 fields"),
        ("", "1 fields"),
        ("1669147134.000002,2.0,3.0,x", "not numbers"),
    ],
)
def test_a_line_that_is_not_a_row_is_refused_saying_why(line: str, says: str) -> None:
    with pytest.raises(RowFormatError, match=says):
        parse_row(line)


@pytest.mark.parametrize(
    ("error", "says"), [("-1.0", "non-negative"), ("inf", "finite"), ("nan", "finite"), ("x", "not a number")]
)
def test_an_error_a_chart_cannot_use_is_refused_by_parse_error(error: str, says: str) -> None:
    with pytest.raises(RowFormatError, match=says):
        parse_error(split_line(f"1669147134.000002,2.0,3.0,{error}"))


def test_a_row_from_an_older_file_with_an_infinite_error_still_reads() -> None:
    assert math.isinf(parse_row("1.000001,1.7e308,-1.7e308,inf").absolute_error)


def test_whole_columns_format_as_rows_do() -> None:
    ids, y_true, y_pred = ["1.000001", "1.000002"], [151.0, 0.1], [150.37, 1 / 3]
    expected = "".join(format_row(MetricRow.of(i, t, p)) for i, t, p in zip(ids, y_true, y_pred, strict=True))
    assert format_columns(ids, y_true, y_pred) == expected


def test_an_orphan_line_reads_back_exactly() -> None:
    orphan = Orphan(ID, "y_pred", 150.37, 1669147134.25)
    line = format_orphan(orphan)
    assert line == f"{ID},y_pred,150.37,1669147134.25\n"
    assert parse_orphan(line) == orphan
    assert math.isfinite(parse_orphan(line).value)
