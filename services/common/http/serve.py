"""Running a service: its log lines (a broker outage said once, not as a page of tracebacks) and uvicorn."""

import gc
import logging
import math
import time

import uvicorn
from fastapi import FastAPI

from services.common.amqp.errors import broker_gone

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _AmqpLibraryLines(logging.Filter):
    """aio-pika and aiormq log each dropped connection with tracebacks, and each failed
    reconnect attempt; BrokerLink already says both in one line, so theirs become one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("aiormq", "aio_pika")):
            record.exc_info, record.exc_text = None, None
        return True


class BrokerOutageLines(logging.Filter):
    """An error of the broker going away — aio-pika's channel close callbacks failing with
    ChannelInvalidStateError during a broker restart, one ERROR per channel, or a task's traceback
    reported by asyncio ("exception was never retrieved") or any other logger — is not a crash:
    it becomes one warning line, said at most once a minute however many report it. BrokerLink
    says the outage itself, and /health answers 503 until it is over."""

    QUIET_S = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._said_at = -math.inf

    @staticmethod
    def _exception(record: logging.LogRecord) -> BaseException | None:
        if record.exc_info:
            return record.exc_info[1]
        if record.name.startswith(("aio_pika", "aiormq")) and isinstance(record.args, tuple):
            # aio-pika logs a failed callback as "Callback %r error: %s: %s" with the exception as an argument
            return next((arg for arg in record.args if isinstance(arg, BaseException)), None)
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = self._exception(record)
        if exc is None or not broker_gone(exc):
            return True
        now = time.monotonic()
        if now - self._said_at < self.QUIET_S:
            return False
        self._said_at = now
        record.msg = (
            f"{record.getMessage()}: {type(exc).__name__}: {str(exc) or 'channel closed'} — the broker went away; "
            f"the connection is restored by itself (more of these within {self.QUIET_S:g} s are not logged)"
        )
        record.args, record.exc_info, record.exc_text = None, None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    outages = BrokerOutageLines()
    for handler in logging.getLogger().handlers:
        handler.addFilter(outages)
        handler.addFilter(_AmqpLibraryLines())
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
    # Its warning comes once a second while the broker is down; BrokerLink says the outage once.
    logging.getLogger("aio_pika.robust_connection").setLevel(logging.ERROR)


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run one service in the foreground; SIGTERM/Ctrl-C run the lifespan's shutdown."""
    setup_logging()
    # What start-up made (the model, its reference, the modules) lives as long as the process: frozen, the
    # collector never scans it again. Unfrozen, model_api's full collections under POST /predict load took
    # ~15 % of its CPU (py-spy: at pydantic's model_construct, where they were set off) and lengthened its p99.
    gc.freeze()
    # No access log: dashboards and scrapers poll these routes many times a second.
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=10)
