"""``python -m services.metric_api.merge OUT.csv SHARD.csv [SHARD.csv ...]``: the join's shards'
``metric_log.csv`` files as one, for a user who wants one big CSV (docs/cluster.md).

The one header, then every row of the first file, then the rows of the next not seen before,
in file order, through the row codec (services/common/metric_rows.py). An id in two files with
the same row is written once; with different values it is a conflict: nothing is written, and
the error names the id, the files and the lines. A last line without its newline is a row still
being written (or cut by a crash): left out, and said. OUT is written atomically (a reader never
sees half of it) and may not be one of the inputs.

A shard's log rotated by size (METRIC_LOG_MAX_BYTES) is read whole: each ``metric_log.csv`` named is
read after the rotated files beside it (``metric_log.<generation>.csv``, oldest first) that are not
named themselves (a glob of ``metric_log*.csv`` names them, in that order).
"""

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.files import METRIC_LOG, atomic_write_chunks, rotated_metric_logs
from services.common.metric_rows import METRIC_LOG_HEADER, MetricRow, RowFormatError, format_rows, parse_row

WRITE_ROWS = 10_000  # rows formatted per chunk of OUT


class MergeError(ValueError):
    """Why the files cannot be merged; the message names the file, line or id."""


@dataclass
class Merged:
    rows: list[MetricRow]
    duplicates: int = 0  # rows found again, the same, in another file (or the same one)
    unfinished: list[str] | None = None  # files whose last line had no newline


def read_rows(path: Path) -> tuple[Iterator[tuple[int, MetricRow]], bool]:
    """(line number, row) of each row of a metric_log.csv, and whether a last unfinished line was left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MergeError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise MergeError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): not a metric_log.csv") from None
    lines = text.split("\n")
    unfinished = lines[-1] != ""
    lines = lines[:-1]
    if not lines or lines[0].rstrip("\r") != METRIC_LOG_HEADER:
        first = repr(lines[0][:80]) if lines else "nothing"
        raise MergeError(f"{path} starts with {first}, not the header {METRIC_LOG_HEADER!r}: not a metric_log.csv")

    def rows() -> Iterator[tuple[int, MetricRow]]:
        for number, line in enumerate(lines[1:], start=2):
            try:
                yield number, parse_row(line)
            except RowFormatError as exc:
                raise MergeError(f"{path} line {number} is not a metric row ({exc}): {line[:80]!r}") from None

    return rows(), unfinished


def merge(paths: Sequence[Path]) -> Merged:
    """Every row of ``paths``, one per id (see the module's docstring); MergeError on a conflict."""
    seen: dict[str, tuple[MetricRow, Path, int]] = {}
    merged = Merged([], unfinished=[])
    for path in paths:
        rows, unfinished = read_rows(path)
        for number, row in rows:
            first = seen.get(row.id)
            if first is None:
                seen[row.id] = (row, path, number)
                merged.rows.append(row)
            elif first[0] == row:
                merged.duplicates += 1
            else:
                kept, where, line = first
                raise MergeError(
                    f"id {row.id} has two different rows: {where} line {line} "
                    f"({kept.y_true!r}, {kept.y_pred!r}) and {path} line {number} ({row.y_true!r}, {row.y_pred!r}); "
                    "one id is joined by one shard only: are these files of one deployment? Nothing was written"
                )
        if unfinished:
            assert merged.unfinished is not None
            merged.unfinished.append(str(path))
    return merged


def with_rotated(paths: Sequence[Path]) -> list[Path]:
    """``paths`` with the rotated files of each metric_log.csv before it, oldest first, except those
    named among ``paths`` already (a glob of ``metric_log*.csv`` lists them): read where named."""
    named = {path.resolve() for path in paths}
    found: list[Path] = []
    for path in paths:
        if path.name == METRIC_LOG:
            found.extend(older for _, older in rotated_metric_logs(path.parent) if older.resolve() not in named)
        found.append(path)
    return found


def chunks(rows: list[MetricRow]) -> Iterator[bytes]:
    yield (METRIC_LOG_HEADER + "\n").encode()
    for start in range(0, len(rows), WRITE_ROWS):
        yield format_rows(rows[start : start + WRITE_ROWS]).encode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.metric_api.merge",
        description="Merge the join's shards' metric_log.csv files into one CSV: one header, one row per id.",
    )
    parser.add_argument("out", type=Path, metavar="OUT.csv", help="the merged CSV to write (atomically)")
    parser.add_argument(
        "shards", type=Path, nargs="+", metavar="SHARD.csv", help="each shard's metric_log.csv (its rotated files are read too)"
    )
    args = parser.parse_args(argv)
    shards = with_rotated(args.shards)
    inputs = {path.resolve() for path in shards}
    if args.out.resolve() in inputs:
        parser.error(f"OUT.csv {args.out} is one of the shards' files: write the merged CSV elsewhere")
    try:
        merged = merge(shards)
        atomic_write_chunks(args.out, chunks(merged.rows))
    except MergeError as exc:
        print(f"merge: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"merge: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for path in merged.unfinished or []:
        print(f"merge: {path} ends in an unfinished line (a row still being written): left out", file=sys.stderr)
    again = f"; {merged.duplicates} rows found twice, the same, written once" if merged.duplicates else ""
    print(f"merged {len(merged.rows)} rows from {len(shards)} files into {args.out}{again}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
