from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.datasets import HOUSE_TARGET, UserModel, write_user_model
from harness.queues import delete_queues, unique_prefix
from services.common.ensure_broker import unreachable
from services.common.settings import Settings
from services.model_api.register import register
from services.model_api.train import train


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The real broker; ``make test`` makes sure one answers."""
    url = str(Settings().AMQP_URL)
    if (reason := unreachable(url)) is not None:
        pytest.fail(f"no RabbitMQ at {url} ({reason}): run the suite with `make test`, which starts one")
    return url


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "myfile.pkl"
    train(path)
    return path


@pytest.fixture(scope="session")
def house(tmp_path_factory: pytest.TempPathFactory) -> UserModel:
    """A user's own model, registered: a Pipeline over a DataFrame with named numeric and categorical
    columns (harness.datasets' house prices), with the reference CSV of rows it was not fitted on."""
    user = write_user_model(tmp_path_factory.mktemp("house"), "house")
    register(user.model_path, user.reference_path, HOUSE_TARGET)
    return user


@pytest.fixture
def queue_prefix(amqp_url: str) -> Iterator[str]:
    """A prefix no other test uses; its queues are deleted afterwards."""
    prefix = unique_prefix()
    yield prefix
    delete_queues(amqp_url, prefix)
