"""Joining labels and predictions by sample id into metric rows. No I/O.

Halves arrive from two queues in any order. Each half is held, with an opaque token (the
delivery to ack later), until its partner comes; then the pair becomes a ``MetricRow``
and both tokens are handed back to be settled once the row is durable. An id already
written is reported as such, so redeliveries never produce a second row.
"""

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")



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


@dataclass(frozen=True)
class Half(Generic[T]):
    value: float
    token: T


@dataclass(frozen=True)
class Joined(Generic[T]):
    row: MetricRow
    tokens: tuple[T, T]


@dataclass(frozen=True)
class Held(Generic[T]):
    """The half waits for its partner. ``replaced`` is an earlier copy of it, now free to settle."""

    replaced: T | None = None


@dataclass(frozen=True)
class AlreadyWritten:
    """The id has its row already: this half is a redelivery or a duplicate."""


Outcome = Joined[T] | Held[T] | AlreadyWritten


class LabelPredictionJoin(Generic[T]):
    def __init__(self, written_ids: set[str] | None = None) -> None:
        self.written_ids: set[str] = written_ids if written_ids is not None else set()
        self._labels: dict[str, Half[T]] = {}
        self._predictions: dict[str, Half[T]] = {}

    @property
    def pending_labels(self) -> int:
        return len(self._labels)

    @property
    def pending_predictions(self) -> int:
        return len(self._predictions)

    def add_label(self, sample_id: str, y_true: float, token: T) -> Outcome[T]:
        return self._add(sample_id, Half(y_true, token), self._labels, self._predictions, label_first=True)

    def add_prediction(self, sample_id: str, y_pred: float, token: T) -> Outcome[T]:
        return self._add(sample_id, Half(y_pred, token), self._predictions, self._labels, label_first=False)

    def _add(
        self,
        sample_id: str,
        half: Half[T],
        mine: dict[str, Half[T]],
        theirs: dict[str, Half[T]],
        *,
        label_first: bool,
    ) -> Outcome[T]:
        if sample_id in self.written_ids:
            return AlreadyWritten()
        partner = theirs.pop(sample_id, None)
        if partner is None:
            earlier = mine.get(sample_id)
            mine[sample_id] = half
            return Held(earlier.token if earlier else None)
        label, prediction = (half, partner) if label_first else (partner, half)
        return Joined(MetricRow.of(sample_id, label.value, prediction.value), (label.token, prediction.token))

    def written(self, sample_id: str) -> None:
        """Record that the row for ``sample_id`` is durable."""
        self.written_ids.add(sample_id)

    def release_all(self) -> list[T]:
        """Forget every held half and return their tokens (to hand back to the broker)."""
        tokens = [half.token for half in (*self._labels.values(), *self._predictions.values())]
        self._labels.clear()
        self._predictions.clear()
        return tokens
