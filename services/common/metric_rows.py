"""A metric row and its line in ``metric_log.csv``; an orphan and its line in ``orphans.csv``.

The one place that knows both formats: metric_api writes and reads them with these
functions, plot_api reads with them, the benchmark writes synthetic rows with them and the
test harness checks the files with them. No I/O here: lines in, lines out.

``metric_log.csv``: the header ``id,y_true,y_pred,absolute_error``, then one line per id,
no spaces, no quoting (ids are restricted to characters that need none, see
``messages.ID_PATTERN``), floats as ``repr()`` writes them: the shortest text that reads
back as the same float.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

METRIC_LOG_HEADER = "id,y_true,y_pred,absolute_error"
# Column positions in a split line.
ID, Y_TRUE, Y_PRED, ABSOLUTE_ERROR = range(4)
COLUMNS = len(METRIC_LOG_HEADER.split(","))

ORPHAN_LOG_HEADER = "id,kind,value,arrived_at"


@dataclass(frozen=True)
class MetricRow:
    """One CSV row, and what the join knew of it besides (not in the CSV, not compared)."""

    id: str
    y_true: float
    y_pred: float
    absolute_error: float
    model_version: str | None = field(default=None, compare=False)
    # The features service's publish time, and how long the first half waited for the second.
    ts: float | None = field(default=None, compare=False)
    lag_s: float | None = field(default=None, compare=False)
    # How long the label came after the prediction (0 when it came first), both as the join saw them.
    label_lag_s: float | None = field(default=None, compare=False)
    # When the prediction was made (its y_pred message's ts, else when it came) and its segment tags.
    predicted_at: float | None = field(default=None, compare=False)
    tags: dict[str, str] | None = field(default=None, compare=False)
    # The loss model's estimate of absolute_error, made with the prediction (issue 24), when it had one.
    estimated_error: float | None = field(default=None, compare=False)

    @classmethod
    def of(
        cls,
        sample_id: str,
        y_true: float,
        y_pred: float,
        model_version: str | None = None,
        ts: float | None = None,
        lag_s: float | None = None,
        label_lag_s: float | None = None,
        predicted_at: float | None = None,
        tags: dict[str, str] | None = None,
        estimated_error: float | None = None,
    ) -> "MetricRow":
        error = abs(y_true - y_pred)
        return cls(sample_id, y_true, y_pred, error, model_version, ts, lag_s, label_lag_s, predicted_at, tags, estimated_error)


def format_row(row: MetricRow) -> str:
    """The row's CSV line, newline included."""
    return f"{row.id},{row.y_true!r},{row.y_pred!r},{row.absolute_error!r}\n"


def format_rows(rows: Iterable[MetricRow]) -> str:
    return "".join(map(format_row, rows))


def format_columns(ids: Sequence[str], y_true: Sequence[float], y_pred: Sequence[float]) -> str:
    """Lines for whole columns at once (the benchmark's synthetic CSVs), as ``format_row`` writes them."""
    return "".join(
        f"{sample_id},{t!r},{p!r},{abs(t - p)!r}\n"
        for sample_id, t, p in zip(ids, map(float, y_true), map(float, y_pred), strict=True)
    )


class RowFormatError(ValueError):
    """A line that is not ``id,y_true,y_pred,absolute_error``; the message says what is wrong."""


def split_line(line: str) -> list[str]:
    """The fields of a line (its newline dropped); RowFormatError unless there are exactly four."""
    fields = line.rstrip("\r\n").split(",")
    if len(fields) != COLUMNS:
        raise RowFormatError(f"{len(fields)} fields, not {COLUMNS} ({METRIC_LOG_HEADER})")
    return fields


def parse_error(fields: Sequence[str]) -> float:
    """The ``absolute_error`` of split fields: a finite, non-negative number, else RowFormatError."""
    try:
        error = float(fields[ABSOLUTE_ERROR])
    except ValueError:
        raise RowFormatError(f"absolute_error {fields[ABSOLUTE_ERROR][:30]!r} is not a number") from None
    if not (error >= 0 and math.isfinite(error)):
        raise RowFormatError(f"absolute_error {error!r} is not a finite, non-negative number")
    return error


def parse_row(line: str) -> MetricRow:
    """A CSV line back into a row; RowFormatError (a ValueError) naming the problem otherwise.

    Any float is taken, as written (a file from an older release may hold ``inf``); readers
    that need a finite error check it with ``parse_error``.
    """
    fields = split_line(line)
    try:
        return MetricRow(fields[ID], float(fields[Y_TRUE]), float(fields[Y_PRED]), float(fields[ABSOLUTE_ERROR]))
    except ValueError:
        raise RowFormatError(f"{','.join(fields[1:])[:60]!r} are not numbers") from None


def parse_number(text: str) -> float:
    """A field read as a float, NaN where it is not one (for readers that skip what they cannot use)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


@dataclass(frozen=True)
class Orphan:
    """A half whose partner has not come within ORPHAN_TTL_S and still has not: a line of ``orphans.csv``."""

    id: str
    kind: str
    value: float
    arrived_at: float


def format_orphan(orphan: Orphan) -> str:
    return f"{orphan.id},{orphan.kind},{orphan.value!r},{orphan.arrived_at!r}\n"


def parse_orphan(line: str) -> Orphan:
    fields = line.rstrip("\r\n").split(",")
    if len(fields) != 4:
        raise RowFormatError(f"{len(fields)} fields, not 4 ({ORPHAN_LOG_HEADER})")
    try:
        return Orphan(fields[0], fields[1], float(fields[2]), float(fields[3]))
    except ValueError:
        raise RowFormatError(f"value/arrived_at {fields[2][:30]!r}, {fields[3][:30]!r} are not numbers") from None
