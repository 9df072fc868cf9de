"""GET /metrics/rows' reading of metric_log.csv: from a byte offset, whole lines only."""

from pathlib import Path

from services.metric_api.rows_feed import read_chunk

HEADER = b"id,y_true,y_pred,absolute_error\n"


def test_whole_lines_from_the_offset_and_where_to_go_on(tmp_path: Path) -> None:
    csv = tmp_path / "metric_log.csv"
    csv.write_bytes(HEADER + b"1,2.0,3.0,1.0\n2,5.0,4.0,1.0\n3,1.0,1.5")  # the last line still being written
    first = read_chunk(csv, 0)
    assert first is not None and first.data == HEADER + b"1,2.0,3.0,1.0\n2,5.0,4.0,1.0\n"
    assert first.next_offset == len(first.data)
    again = read_chunk(csv, first.next_offset)
    assert again is not None and (again.data, again.next_offset, again.log_id) == (b"", first.next_offset, first.log_id)
    with csv.open("ab") as f:
        f.write(b",0.5\n")
    rest = read_chunk(csv, first.next_offset)
    assert rest is not None and rest.data == b"3,1.0,1.5,0.5\n"


def test_at_most_max_bytes_of_whole_lines_but_a_long_line_whole(tmp_path: Path) -> None:
    csv = tmp_path / "metric_log.csv"
    lines = [f"{n},1.0,2.0,1.0\n".encode() for n in range(100)]
    csv.write_bytes(HEADER + b"".join(lines))
    chunk = read_chunk(csv, len(HEADER), max_bytes=50)
    assert chunk is not None and chunk.data == b"".join(lines[:3]) and len(chunk.data) <= 50
    csv.write_bytes(b"x" * 300 + b"\nnext\n")
    long = read_chunk(csv, 0, max_bytes=100)
    assert long is not None and long.data.startswith(b"x" * 300 + b"\n") and long.data.endswith(b"\n")
    assert long.next_offset == len(long.data)


def test_an_offset_past_the_end_means_the_file_was_replaced(tmp_path: Path) -> None:
    csv = tmp_path / "metric_log.csv"
    csv.write_bytes(HEADER)
    assert read_chunk(csv, len(HEADER) + 1) is None
    missing = tmp_path / "none.csv"
    assert read_chunk(missing, 10) is None
    empty = read_chunk(missing, 0)
    assert empty is not None and (empty.data, empty.next_offset) == (b"", 0)
