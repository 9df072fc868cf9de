"""What each fast part relies on in aiormq, and whether the aiormq installed still has it.

Each part copies or replaces a few of aiormq's functions, private ones among them (a
name-mangled method, the frame receiver). A version number says too little: a patch release
may change one of them, another release none. So each part is gated on those functions
themselves — the sha256 of their source, as it is in the aiormq the part was written against.
A part whose functions differ (or whose source cannot be read) is not used; its public path is
(correct, slower), and a warning names what changed. ``python -m
services.common.amqp.fastpath.gate`` prints the fingerprints of the aiormq installed, for the
review that comes with a new aiormq.

A part is also off where the setting FASTPATH_OFF names its key (``Part.key``; ``all`` for every
part): to measure what it buys (``python -m bench.fastpath``), or to step around a fault suspected
in it. Said once, at WARNING, as the process first asks.
"""

import functools
import hashlib
import importlib
import inspect
import logging
from dataclasses import dataclass
from importlib.metadata import version

from services.common.settings import FastpathPart, get_settings

log = logging.getLogger(__name__)

WRITTEN_AGAINST = "7.2.4"  # the aiormq whose sources the fingerprints below are of
AIORMQ_VERSION = version("aiormq")

# "module:qualified name" -> the first 16 hex digits of the sha256 of its source in aiormq WRITTEN_AGAINST.
FINGERPRINTS = {
    "aiormq.abc:ChannelFrame": "7c04ade0aa2ebf7c",
    "aiormq.base:Base.create_future": "cc9e43a15ac86c5f",
    "aiormq.base:FutureStore.reject_all": "cc58ef77b7276d3c",
    "aiormq.channel:Channel.__init__": "884f16c5d3f72efc",
    "aiormq.channel:Channel.lock": "ca0c47b536318b94",
    "aiormq.channel:Channel.basic_publish": "4c5c91a4d75be291",
    "aiormq.channel:Channel._on_return_frame": "f5d69cc1abbbcd40",
    "aiormq.channel:Channel._on_confirm_frame": "0b1898e2d2b38ab1",
    "aiormq.channel:Channel._confirm_delivery": "191bcd75b78f2ed1",
    "aiormq.channel:Channel._reader": "0b044167794c2364",
    "aiormq.channel:Channel._on_deliver_frame": "3cb7bf324f3af08d",
    "aiormq.channel:Channel._Channel__get_content_header": "9128434a852e41f8",
    "aiormq.channel:Channel._read_content": "0fc20efc56f8c5f6",
    "aiormq.channel:Channel._on_consumer_done": "81de4ecbbb0ee668",
    "aiormq.channel:Channel.basic_consume": "dc972a7ac27f7e73",
    "aiormq.connection:Connection.connect": "76f0d237ca4d63cf",
    "aiormq.connection:Connection._Connection__reader": "4c85e094b91e25af",
    "aiormq.connection:Connection._Connection__writer": "056f3288feafdd41",
    "aiormq.connection:FrameReceiver": "8b88baa9ba254db3",
}


@dataclass(frozen=True, eq=False)  # each part is itself: hashed by identity (usable() is asked per batch)
class Part:
    """A fast part, its key in FASTPATH_OFF, and the aiormq functions it copies, replaces or calls."""

    key: FastpathPart
    name: str
    relies_on: tuple[str, ...]


BATCHED_PUBLISH = Part(
    "publish",
    "a batch of publishes in one write",
    (
        "aiormq.channel:Channel.__init__", "aiormq.channel:Channel.lock", "aiormq.channel:Channel.basic_publish",
        "aiormq.channel:Channel._on_return_frame", "aiormq.channel:Channel._on_confirm_frame",
        "aiormq.channel:Channel._confirm_delivery", "aiormq.base:Base.create_future", "aiormq.base:FutureStore.reject_all",
        "aiormq.abc:ChannelFrame", "aiormq.connection:Connection._Connection__writer",
    ),
)  # fmt: skip
INLINE_DELIVERIES = Part(
    "deliveries",
    "deliveries without a task each",
    (
        "aiormq.channel:Channel._reader", "aiormq.channel:Channel._on_deliver_frame",
        "aiormq.channel:Channel._Channel__get_content_header", "aiormq.channel:Channel._read_content",
        "aiormq.channel:Channel._on_consumer_done", "aiormq.channel:Channel.basic_consume",
    ),
)  # fmt: skip
FAST_FRAMES = Part(
    "frames",
    "frames read and decoded directly",
    (
        "aiormq.connection:FrameReceiver", "aiormq.connection:Connection.connect",
        "aiormq.connection:Connection._Connection__reader",
    ),
)  # fmt: skip
PARTS = (BATCHED_PUBLISH, INLINE_DELIVERIES, FAST_FRAMES)


def fingerprint(name: str) -> str | None:
    """The fingerprint of ``name`` ("module:qualified name") in the aiormq installed; None if it is gone."""
    module_name, _, qualified = name.partition(":")
    try:
        found: object = importlib.import_module(module_name)
        for attribute in qualified.split("."):
            found = getattr(found, attribute)
        if isinstance(found, property):
            found = found.fget
        source = inspect.getsource(found)  # type: ignore[arg-type]  # a function or a class; anything else raises TypeError
    except (ImportError, AttributeError, OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def changed(part: Part) -> list[str]:
    """The functions ``part`` relies on that are not as they were in aiormq WRITTEN_AGAINST."""
    return [name for name in part.relies_on if fingerprint(name) != FINGERPRINTS[name]]


@functools.cache
def switched_off() -> frozenset[FastpathPart]:
    """The keys of the parts FASTPATH_OFF turns off in this process (said once)."""
    off = get_settings().fastpath_off
    if off:
        log.warning(
            "FASTPATH_OFF=%s turns off %s: the public path is used instead (correct, slower)",
            get_settings().FASTPATH_OFF, "; ".join(f"{part.key} ({part.name})" for part in PARTS if part.key in off),
        )  # fmt: skip
    return off


@functools.cache
def usable(part: Part) -> bool:
    """Whether ``part`` may be used: FASTPATH_OFF does not turn it off, and the aiormq installed still
    has what it relies on (said once when not)."""
    if part.key in switched_off():
        return False
    differ = changed(part)
    if differ:
        log.warning(
            "aiormq %s differs from %s, which fastpath was written against, in %s: %s is off (the public path "
            "is used: correct, slower)",
            AIORMQ_VERSION, WRITTEN_AGAINST, ", ".join(differ), part.name,
        )  # fmt: skip
    return not differ


if __name__ == "__main__":
    print(f"aiormq {AIORMQ_VERSION}; fastpath was written against {WRITTEN_AGAINST}")
    for name, expected in FINGERPRINTS.items():
        found = fingerprint(name)
        print(f'    "{name}": "{found}",{"" if found == expected else "  # changed"}')
