import shutil
import time
from collections.abc import Iterator

import pytest

from harness import local_cluster as cluster


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[str]:
    """The local three-node cluster, started as `make cluster` starts it; stopped (its data
    removed) after the tests unless it was already running before them. Yields AMQP_URL."""
    if shutil.which(str(cluster.RABBITMQ_BIN / "rabbitmq-server")) is None:
        pytest.skip(f"rabbitmq-server is not installed in {cluster.RABBITMQ_BIN}: the cluster tests cannot run")
    was_up = len(cluster.running()) == len(cluster.NODES)
    began = time.monotonic()
    cluster.start()
    print(f"\nCLUSTER up in {time.monotonic() - began:.0f}s (was up before: {was_up})")
    yield cluster.URLS
    if not was_up:
        began = time.monotonic()
        cluster.stop()
        print(f"\nCLUSTER stopped and removed in {time.monotonic() - began:.0f}s")
