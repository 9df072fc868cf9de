"""Fixtures of the fastpath tests: FASTPATH_OFF set for one test."""

from collections.abc import Callable, Iterator

import pytest

from services.common.amqp.fastpath import gate
from services.common.settings import get_settings


def _forget() -> None:
    """What the process read of FASTPATH_OFF (the settings, the parts off, each part's verdict) is read again."""
    get_settings.cache_clear()
    gate.switched_off.cache_clear()
    gate.usable.cache_clear()


@pytest.fixture
def fastpath_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """``fastpath_off("publish,frames")``: this process's FASTPATH_OFF from now on, as a service reads it at start."""

    def switch(value: str) -> None:
        monkeypatch.setenv("FASTPATH_OFF", value)
        _forget()

    yield switch
    monkeypatch.delenv("FASTPATH_OFF", raising=False)
    _forget()
