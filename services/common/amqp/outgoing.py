"""One message to publish, and the AMQP message_id that is its own.

The three halves of a sample (features, y_true, y_pred) carry one sample id in their bodies,
and a features message and its label leave in one batch on one channel. The broker names a
message it returns (``Basic.Return``, e.g. its queue is missing) only by its AMQP
``message_id``, and aiormq finds the publish to fail by that id alone: two messages in flight
with one id, and the return fails the other's publish while the returned one counts as
confirmed — lost. So every ``Outgoing`` gets a message_id no other message of this process has:
``<sample id>/<n>``, n counting the messages made here. It still says which sample (and a DLQ
copy of a message keeps its sample id); retrying an ``Outgoing`` sends it under the same id.
"""

import itertools
from dataclasses import dataclass, field

from pamqp.commands import Basic
from pamqp.common import FieldTable

from services.common.amqp.topology import PERSISTENT

MESSAGE_ID_MAX = 255  # an AMQP short string
_made = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: where, what, and the sample id it carries (for a dead letter, the
    id of the message it copies); ``expiration_ms``: the broker drops (or dead-letters) it after
    that long in its queue (a delayed label). ``message_id``: its own (see the module)."""

    queue: str
    body: bytes
    sample_id: str
    headers: dict[str, str] | None = None
    expiration_ms: int | None = None
    message_id: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "message_id", own_message_id(self.sample_id, next(_made)))

    def properties(self) -> Basic.Properties:
        headers: FieldTable | None = None if self.headers is None else dict(self.headers)  # a field table may hold more than str
        return Basic.Properties(
            delivery_mode=PERSISTENT,
            content_type="application/json",
            message_id=self.message_id,
            headers=headers,
            expiration=None if self.expiration_ms is None else str(self.expiration_ms),
        )


def own_message_id(sample_id: str, number: int) -> str:
    """``<sample id>/<number>``, the sample id cut short if the whole would not fit a short string."""
    message_id = f"{sample_id}/{number}"
    if len(message_id) <= MESSAGE_ID_MAX and message_id.isascii():  # any sample id (64 characters at most)
        return message_id
    suffix = f"/{number}".encode()
    kept = sample_id.encode()[: MESSAGE_ID_MAX - len(suffix)]
    return kept.decode(errors="ignore") + suffix.decode()
