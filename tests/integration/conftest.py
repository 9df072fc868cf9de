"""Fixtures of the integration tests beyond the suite's (tests/conftest.py)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import BrowserError, Chromium


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    """Headless Chromium (Debian's package; `make test` installs it as root); a clear failure without it."""
    try:
        with Chromium(tmp_path / "chromium") as browser:
            yield browser
    except BrowserError as exc:
        pytest.fail(str(exc))
