"""A delivery as the consumer sees it: validated into a ``Delivery``, or refused with the reason
its copy in the dead-letter queue carries (no I/O)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiormq.abc import DeliveredMessage
from pydantic import ValidationError

from services.common.amqp.outgoing import Outgoing
from services.common.amqp.topology import dlq_name
from services.common.messages import MAX_MESSAGE_BYTES, SampleMessage

M = TypeVar("M", bound=SampleMessage)

REASON_MAX = 1000  # characters of x-dlq-reason


@dataclass(slots=True, eq=False)
class Delivery(Generic[M]):
    """A delivery and its validated message (None for one refused before validation)."""

    message: M
    raw: DeliveredMessage  # aiormq's: its channel is the aiormq channel it came on
    queue: str
    arrived: float  # the consumer's clock


Rejection = tuple[Delivery[Any], str]  # a delivery to dead-letter, and why


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a delivery is not even handed to the service: its reason, and the validation error (None: too large)."""

    reason: str
    error: ValidationError | None = None


Context = Callable[[], dict[str, Any]]  # what validators need to know now (model_api: its model's schema)


def validate(body: bytes, schema: type[M], context: Context | None = None) -> M | Refusal:
    """``body`` as a ``schema`` message (validated with ``context()`` as pydantic's context), or why not."""
    if len(body) > MAX_MESSAGE_BYTES:
        return Refusal(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return schema.model_validate_json(body, context=None if context is None else context())
    except ValidationError as exc:
        return Refusal(describe_validation_error(exc), exc)


def describe_validation_error(exc: ValidationError) -> str:
    """One short line for the x-dlq-reason header: the first problems, where and what."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def dead_letter_copy(delivery: Delivery[Any], reason: str) -> Outgoing:
    """The copy of ``delivery`` for its queue's DLQ: the body as it came, the reason and the queue
    in headers, under the sample id it carries (its message's, else the AMQP message_id it came with)."""
    sample_id = delivery.message.id if delivery.message is not None else message_id(delivery.raw)
    headers = {"x-dlq-reason": reason[:REASON_MAX], "x-original-queue": delivery.queue}
    return Outgoing(dlq_name(delivery.queue), delivery.raw.body, sample_id, headers)


def delivery_tag(raw: DeliveredMessage) -> int:
    """Its delivery tag: aiormq types it optional (a returned message has none), a consumed one always has one."""
    tag = raw.delivery_tag
    assert tag is not None, "a delivery without a delivery tag"
    return tag


def message_id(raw: DeliveredMessage) -> str:
    """The AMQP message_id its publisher set, or "" for a message without one."""
    return raw.header.properties.message_id or ""
