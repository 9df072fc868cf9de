"""Joining labels and predictions by sample id into metric rows. No I/O.

Halves arrive from two queues in any order, any number of times (at-least-once
delivery). A half whose partner has not come is *held* in a ``HalfStore``; when the
partner comes the pair becomes a ``MetricRow`` and the id is recorded as written, so a
redelivered half is recognised as a duplicate and never makes a second row. A half that
contradicts what is known of its id (another value for the same id) is a conflict.
The store decides where halves live (memory in tests, SQLite in the service).
"""

from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["y_true", "y_pred"]
LABEL: Kind = "y_true"
PREDICTION: Kind = "y_pred"


@dataclass(frozen=True)
class MetricRow:
    id: str
    y_true: float
    y_pred: float
    absolute_error: float

    @classmethod
    def of(cls, sample_id: str, y_true: float, y_pred: float) -> "MetricRow":
        return cls(sample_id, y_true, y_pred, abs(y_true - y_pred))

    def csv_line(self) -> str:
        # repr() of a float is the shortest text that reads back as the same float.
        return f"{self.id},{self.y_true!r},{self.y_pred!r},{self.absolute_error!r}\n"


class HalfStore(Protocol):
    def written(self, sample_id: str) -> MetricRow | None: ...
    def held(self, sample_id: str, kind: Kind) -> float | None: ...
    def hold(self, sample_id: str, kind: Kind, value: float, arrived_at: float) -> None: ...
    def release(self, sample_id: str, kind: Kind) -> None: ...
    def record_written(self, row: MetricRow) -> None: ...


@dataclass(frozen=True)
class Joined:
    row: MetricRow


@dataclass(frozen=True)
class Held:
    """The half waits in the store for its partner."""


@dataclass(frozen=True)
class Duplicate:
    """The same half was seen before (a redelivery): nothing to do."""


@dataclass(frozen=True)
class Conflict:
    """The half contradicts what is known of its id."""

    reason: str


Outcome = Joined | Held | Duplicate | Conflict


def other(kind: Kind) -> Kind:
    return PREDICTION if kind == LABEL else LABEL


class LabelPredictionJoin:
    def __init__(self, store: HalfStore) -> None:
        self.store = store

    def add(self, kind: Kind, sample_id: str, value: float, arrived_at: float) -> Outcome:
        row = self.store.written(sample_id)
        if row is not None:
            seen = row.y_true if kind == LABEL else row.y_pred
            if seen == value:
                return Duplicate()
            return Conflict(f"id {sample_id} already has its row with {kind}={seen!r}; this message says {value!r}")
        held = self.store.held(sample_id, kind)
        if held is not None:
            if held == value:
                return Duplicate()
            return Conflict(f"id {sample_id} already has {kind}={held!r} waiting; this message says {value!r}")
        partner = self.store.held(sample_id, other(kind))
        if partner is None:
            self.store.hold(sample_id, kind, value, arrived_at)
            return Held()
        self.store.release(sample_id, other(kind))
        y_true, y_pred = (value, partner) if kind == LABEL else (partner, value)
        joined = MetricRow.of(sample_id, y_true, y_pred)
        self.store.record_written(joined)
        return Joined(joined)


class MemoryHalfStore:
    """A HalfStore in dicts: for tests, and to show what a store must do."""

    def __init__(self) -> None:
        self.rows: dict[str, MetricRow] = {}
        self.halves: dict[tuple[str, Kind], tuple[float, float]] = {}

    def written(self, sample_id: str) -> MetricRow | None:
        return self.rows.get(sample_id)

    def held(self, sample_id: str, kind: Kind) -> float | None:
        half = self.halves.get((sample_id, kind))
        return half[0] if half else None

    def hold(self, sample_id: str, kind: Kind, value: float, arrived_at: float) -> None:
        self.halves[(sample_id, kind)] = (value, arrived_at)

    def release(self, sample_id: str, kind: Kind) -> None:
        del self.halves[(sample_id, kind)]

    def record_written(self, row: MetricRow) -> None:
        self.rows[row.id] = row
