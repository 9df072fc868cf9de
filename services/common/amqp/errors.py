"""What the broker going away raises, named once.

A broker restart closes every channel under the code using it: aiormq raises
``ChannelInvalidStateError`` (a ``RuntimeError``, not an ``AMQPError``) from whatever touches a
closed channel, besides the connection errors (``OSError``, ``AMQPError``) and timeouts. Each
such error is an outage the link recovers from, said once as a warning, never a crash.
"""

from aio_pika.exceptions import AMQPError
from aiormq.exceptions import ChannelInvalidStateError

BROKER_GONE: tuple[type[BaseException], ...] = (TimeoutError, OSError, AMQPError, ChannelInvalidStateError)


def broker_gone(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, says the broker or a channel went away
    (aio-pika also raises a bare ``RuntimeError("<Connection ...> closed")``)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ChannelInvalidStateError | AMQPError | ConnectionError):
            return True
        if type(exc) is RuntimeError and str(exc).endswith(" closed"):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
