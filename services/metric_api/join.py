"""Joining labels and predictions by sample id into metric rows. No I/O.

Halves arrive from two queues in any order, any number of times (at-least-once
delivery). A half whose partner has not come is *held* in a ``HalfStore``; when the
partner comes the pair becomes a ``MetricRow`` and the id is recorded as written, so a
redelivered half is recognised as a duplicate and never makes a second row. A half that
contradicts what is known of its id (another value for the same id) is a conflict.
The store decides where halves live (memory in tests, SQLite in the service).

A half that waited longer than HALF_RETENTION_S *expired*: it left the store for an archive
file, its id remembered. A partner coming after that makes no row: it is a conflict (the
service dead-letters it, the reason says so), since its half is no longer here to join; the
same half delivered again is a duplicate.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from services.common.metric_rows import MetricRow

Kind = Literal["y_true", "y_pred"]
LABEL: Kind = "y_true"
PREDICTION: Kind = "y_pred"


@dataclass(frozen=True)
class HeldHalf:
    value: float
    arrived_at: float
    ts: float | None = None
    model_version: str | None = None
    tags: dict[str, str] | None = None  # a prediction's segment tags (services/common/tags.py)
    estimate: float | None = None  # a prediction's estimated error (issue 24), kept while it waits for its label


class HalfStore(Protocol):
    def written(self, sample_id: str) -> MetricRow | None: ...
    def held_halves(self, sample_id: str) -> dict[Kind, HeldHalf]:
        """The halves of ``sample_id`` waiting (none, one, or a label and a prediction), in one lookup."""
        ...

    def hold(self, sample_id: str, kind: Kind, half: HeldHalf) -> None: ...
    def release(self, sample_id: str, kind: Kind) -> None: ...
    def record_written(self, row: MetricRow, written_at: float | None = None) -> None: ...
    def expired_kinds(self, sample_id: str) -> set[Kind]:
        """The kinds of ``sample_id``'s halves that expired (left for the archive) and are still remembered."""
        ...


@dataclass(frozen=True)
class Joined:
    row: MetricRow
    # The half that had waited for this one: its kind and when it arrived (an orphan, if long ago).
    waited: tuple[Kind, float] | None = field(default=None, compare=False)


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


# A prediction made again for a redelivered features message may differ in its last bits: the
# model computed it in a batch of another size, and BLAS sums in another order (seen in the
# compose test after kill -9 of model_api: ~1e-16 relative). Far below any real difference.
PREDICTION_REL_TOL = 1e-9


def same_value(kind: Kind, seen: float, value: float) -> bool:
    """Whether a half repeats one already known for its id: a label exactly, a prediction to the
    last bits floating-point reordering may change (PREDICTION_REL_TOL); the first one stays."""
    if kind == LABEL:
        return seen == value
    return math.isclose(seen, value, rel_tol=PREDICTION_REL_TOL, abs_tol=1e-12)


class LabelPredictionJoin:
    def __init__(self, store: HalfStore) -> None:
        self.store = store

    def add(
        self,
        kind: Kind,
        sample_id: str,
        value: float,
        arrived_at: float,
        *,
        ts: float | None = None,
        model_version: str | None = None,
        tags: dict[str, str] | None = None,
        estimate: float | None = None,
    ) -> Outcome:
        """One half; ``ts``, ``model_version``, ``tags`` and ``estimate`` (of a prediction) go along
        into the row, with when the prediction was made (its ts, else when it came)."""
        row = self.store.written(sample_id)
        if row is not None:
            seen = row.y_true if kind == LABEL else row.y_pred
            if same_value(kind, seen, value):
                return Duplicate()
            return Conflict(f"id {sample_id} already has its row with {kind}={seen!r}; this message says {value!r}")
        waiting = self.store.held_halves(sample_id)
        held = waiting.get(kind)
        if held is not None:
            if same_value(kind, held.value, value):
                return Duplicate()
            return Conflict(f"id {sample_id} already has {kind}={held.value!r} waiting; this message says {value!r}")
        partner = waiting.get(other(kind))
        if partner is None:
            expired = self.store.expired_kinds(sample_id)
            if kind in expired:
                return Duplicate()
            if expired:
                return Conflict(
                    f"id {sample_id}: its {other(kind)} waited longer than HALF_RETENTION_S and expired "
                    f"(archived in expired_halves.log); this {kind} came too late to make its row"
                )
            self.store.hold(sample_id, kind, HeldHalf(value, arrived_at, ts, model_version, tags, estimate))
            return Held()
        waited_s = max(0.0, arrived_at - partner.arrived_at)
        if kind == LABEL:
            y_true, y_pred, model_version, tags = value, partner.value, partner.model_version, partner.tags
            estimate = partner.estimate
            predicted_at = partner.ts if partner.ts is not None else partner.arrived_at
        else:
            y_true, y_pred = partner.value, value
            predicted_at = ts if ts is not None else arrived_at
        if not math.isfinite(y_true - y_pred):
            # Held from before the values were bounded: no row whose error is not a number, ever.
            return Conflict(f"id {sample_id}: |{y_true!r} - {y_pred!r}| is not a finite number; no row is written for it")
        self.store.release(sample_id, other(kind))
        joined = MetricRow.of(
            sample_id,
            y_true,
            y_pred,
            model_version=model_version,
            ts=ts if ts is not None else partner.ts,
            lag_s=waited_s,
            label_lag_s=waited_s if kind == LABEL else 0.0,
            predicted_at=predicted_at,
            tags=tags,
            estimated_error=estimate,
        )
        self.store.record_written(joined, arrived_at)
        return Joined(joined, (other(kind), partner.arrived_at))


class MemoryHalfStore:
    """A HalfStore in dicts: for tests, and to show what a store must do."""

    def __init__(self) -> None:
        self.rows: dict[str, MetricRow] = {}
        self.halves: dict[tuple[str, Kind], HeldHalf] = {}
        self.expired: set[tuple[str, Kind]] = set()

    def written(self, sample_id: str) -> MetricRow | None:
        return self.rows.get(sample_id)

    def held(self, sample_id: str, kind: Kind) -> float | None:
        half = self.halves.get((sample_id, kind))
        return half.value if half else None

    def held_half(self, sample_id: str, kind: Kind) -> HeldHalf | None:
        return self.halves.get((sample_id, kind))

    def held_halves(self, sample_id: str) -> dict[Kind, HeldHalf]:
        return {kind: half for kind in (LABEL, PREDICTION) if (half := self.halves.get((sample_id, kind))) is not None}

    def hold(self, sample_id: str, kind: Kind, half: HeldHalf) -> None:
        self.halves[(sample_id, kind)] = half

    def release(self, sample_id: str, kind: Kind) -> None:
        del self.halves[(sample_id, kind)]

    def expire(self, halves: Sequence[tuple[str, Kind]], expired_at: float) -> None:  # noqa: ARG002 - SqliteHalfStore's signature; no clock here
        for sample_id, kind in halves:
            del self.halves[(sample_id, kind)]
            self.expired.add((sample_id, kind))

    def expired_kinds(self, sample_id: str) -> set[Kind]:
        return {kind for kind in (LABEL, PREDICTION) if (sample_id, kind) in self.expired}

    def record_written(self, row: MetricRow, written_at: float | None = None) -> None:  # noqa: ARG002 - HalfStore's signature; no clock here
        self.rows[row.id] = row
