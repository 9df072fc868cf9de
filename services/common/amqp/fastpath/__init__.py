"""The one place that uses aiormq internals, each part with the public path beside it.

- ``gate``        what each part relies on in aiormq (fingerprints of those functions), and
                  whether the aiormq installed still has it; a part that does not hold is off
- ``publishing``  a batch of publishes in one write (aiormq's ``basic_publish`` otherwise)
- ``deliveries``  ``consume`` with an ``InlineConsumer``: deliveries handed over without a task each
- ``frames``      frames read in two reads and decoded directly, per connection (our transport's)

Each part was measured against the public path (docs/performance.md, "What each fast part buys"):
each buys 5 % or more of the pipeline's CPU per sample; a fifth, a larger writer queue in aiormq,
bought nothing measurable and was removed. Without them the services are correct, just slower.
FASTPATH_OFF (a setting: ``publish``, ``deliveries``, ``frames``, ``all``) turns
parts off, for ``python -m bench.fastpath`` to measure what each buys, or to step around one.
"""

from services.common.amqp.fastpath.deliveries import InlineConsumer, cancel, consume
from services.common.amqp.fastpath.frames import stream_reader
from services.common.amqp.fastpath.publishing import publish

__all__ = ["InlineConsumer", "cancel", "consume", "publish", "stream_reader"]
