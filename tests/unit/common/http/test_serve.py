"""A service's log lines: a broker outage is one warning a minute, not a page of tracebacks."""

import logging

import pytest
from aiormq.exceptions import ChannelInvalidStateError

from services.common.http.serve import BrokerOutageLines


def test_a_broker_outage_traceback_becomes_one_warning_line_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    lines = BrokerOutageLines()
    caplog.handler.addFilter(lines)
    logger = logging.getLogger("asyncio")
    try:
        for _ in range(5):
            logger.error("Task exception was never retrieved", exc_info=ChannelInvalidStateError("<Channel: 3> closed"))
        logger.error("something else", exc_info=ValueError("not the broker"))
    finally:
        caplog.handler.removeFilter(lines)
    outage, other = caplog.records
    assert (outage.levelname, outage.exc_info) == ("WARNING", None)
    assert (
        "ChannelInvalidStateError: <Channel: 3> closed" in outage.getMessage() and "the broker went away" in outage.getMessage()
    )
    assert other.exc_info is not None


def test_aio_pikas_error_per_closed_channel_becomes_one_warning_too(caplog: pytest.LogCaptureFixture) -> None:
    """During a broker restart aio-pika logs, for each channel, "Callback ... error: ChannelInvalidStateError"
    at ERROR, without a traceback but with the exception as an argument: that looked like a crash."""
    lines = BrokerOutageLines()
    caplog.handler.addFilter(lines)
    logger = logging.getLogger("aio_pika.tools")
    try:
        for channel in range(4):
            closed = ChannelInvalidStateError("No active transport in channel")
            logger.error("Callback %r error: %s: %s", f"<RobustChannel {channel}>._on_close", type(closed).__name__, closed)
        logger.error("Callback %r error: %s: %s", "x", "ValueError", ValueError("a bug, not an outage"))
    finally:
        caplog.handler.removeFilter(lines)
    assert [record.levelname for record in caplog.records] == ["WARNING", "ERROR"]
    assert "the broker went away" in caplog.records[0].getMessage()
