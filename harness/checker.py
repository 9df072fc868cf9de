"""Compare the ids that were published with the rows of metric_log.csv.

The categories of the jepsen/RabbitMQ queue checker: ``lost`` (published, no row),
``duplicated`` (more than one row), ``unexpected`` (a row for an id never published).
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.metric_rows import METRIC_LOG_HEADER, RowFormatError, parse_row
from services.metric_api.merge import with_rotated


@dataclass(frozen=True)
class Verdict:
    published: int
    rows: int
    lost: int
    duplicated: int
    unexpected: int

    @property
    def exact(self) -> bool:
        return self.lost == self.duplicated == self.unexpected == 0


def row_ids(csv: Path) -> list[str]:
    """The id of every row of a metric_log.csv, in file order (none while there is no file).

    A last line without its newline is not a row yet: metric_api is still writing it, or a
    crash cut it short (metric_api removes such a line when it reopens the file, and the row
    comes again whole). Any other line that is not a metric row is an error naming the line.
    """
    try:
        text = csv.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]  # what follows the last newline is unfinished
    if not lines:
        return []
    if lines[0].rstrip("\r") != METRIC_LOG_HEADER:
        raise ValueError(f"{csv} starts with {lines[0][:80]!r}, not the header {METRIC_LOG_HEADER!r}")
    ids = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            ids.append(parse_row(line).id)
        except RowFormatError as exc:
            raise ValueError(f"{csv} line {number} is not a metric row ({exc}): {line[:80]!r}") from None
    return ids


def check(published: list[str], csv: Path) -> Verdict:
    return check_all(published, [csv])


def check_all(published: list[str], csvs: Sequence[Path]) -> Verdict:
    """The verdict over the union of several metric_log.csv files (the join's shards), each with the
    rotated files beside it (METRIC_LOG_MAX_BYTES)."""
    ids = [sample_id for csv in with_rotated(csvs) for sample_id in row_ids(csv)]
    counts = Counter(ids)
    expected = set(published)
    return Verdict(
        published=len(expected),
        rows=len(ids),
        lost=len(expected - counts.keys()),
        duplicated=sum(n - 1 for n in counts.values() if n > 1),
        unexpected=len(counts.keys() - expected),
    )
