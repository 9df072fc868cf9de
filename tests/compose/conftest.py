"""tests/compose: deploy/compose.yml built and run for real, through `make test-compose`.

They run only when selected by their marker alone, `-m compose` (what make test-compose
does): `make test`, and any other selection such as `-m "not faults"`, leaves them out, so
one CI run builds and runs the stack once. Without a Docker engine they are skipped, each
with the reason (tests/compose/engine.py), never passed.
"""

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.docker_engine import NoEngine
from tests.compose.engine import Engine, get_engine
from tests.compose.stack import ComposeStack, remove_stale_projects, remove_work

# The uid:gid the services run as, when the test may give the logs folder to anyone (root).
APP_UID = 10001


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if re.fullmatch(r"\s*compose\s*", config.getoption("markexpr") or ""):
        return
    left_out = [item for item in items if item.get_closest_marker("compose")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not item.get_closest_marker("compose")]


@pytest.fixture(scope="session")
def engine() -> Engine:
    try:
        engine = get_engine()
    except NoEngine as exc:
        print(f"\nCOMPOSE SKIPPED: no Docker engine for the compose tests: {exc}", flush=True)
        pytest.skip(f"no Docker engine: {exc}")
    print(f"\nCOMPOSE engine {engine.version}, {' '.join(engine.compose)}: {engine.how}", flush=True)
    remove_stale_projects(engine)
    return engine


@pytest.fixture(scope="module")
def stack(engine: Engine, request: pytest.FixtureRequest) -> Iterator[ComposeStack]:
    """A project of its own, torn down with its volumes and images whatever happened."""
    work = Path(tempfile.mkdtemp(prefix="compose-test-"))
    failed_before = request.session.testsfailed
    stack = ComposeStack(engine, work, app_uid=APP_UID if os.geteuid() == 0 else os.getuid())
    try:
        yield stack
    finally:
        try:
            (work / "services.log").write_text(stack.service_logs(tail=2000))
        finally:
            stack.down("-v", "--rmi", "local")
            remove_work(work, keep=request.session.testsfailed > failed_before)
