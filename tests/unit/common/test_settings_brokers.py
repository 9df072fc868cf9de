"""AMQP_URL listing a cluster's brokers, and QUEUE_TYPE."""

import pytest
from pydantic import ValidationError

from services.common.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AMQP_URL", "QUEUE_TYPE"):
        monkeypatch.delenv(name, raising=False)


def test_one_broker_is_a_list_of_one() -> None:
    (broker,) = Settings().brokers
    assert (broker.host, broker.port) == ("localhost", 5672)


def test_several_brokers_are_kept_in_order_spaces_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AMQP_URL", "amqp://guest:guest@127.0.0.1:5682/, amqp://guest:guest@127.0.0.1:5681/ ,amqp://guest:guest@127.0.0.1:5683/"
    )
    settings = Settings()
    assert [(url.host, url.port) for url in settings.brokers] == [("127.0.0.1", 5682), ("127.0.0.1", 5681), ("127.0.0.1", 5683)]
    assert "," in settings.AMQP_URL and " " not in settings.AMQP_URL


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("amqp://guest:guest@h1:5672/,", "empty entry"),
        ("amqp://guest:guest@h1:5672/,,amqp://guest:guest@h2:5672/", "empty entry"),
        ("amqp://guest:guest@h1:5672/,http://h2:5672/", "amqp"),
        ("amqp://guest:guest@h1:5672/,amqp://other:pw@h2:5672/", "one cluster"),
        ("amqp://guest:guest@h1:5672/,amqp://guest:guest@h2:5672/vhost", "one cluster"),
        ("amqp://guest:guest@h1:5672/,amqps://guest:guest@h2:5671/", "one cluster"),
    ],
)
def test_a_bad_list_is_refused_naming_the_setting_and_the_problem(monkeypatch: pytest.MonkeyPatch, value: str, says: str) -> None:
    monkeypatch.setenv("AMQP_URL", value)
    with pytest.raises(ValidationError, match="AMQP_URL") as refused:
        Settings()
    assert says in str(refused.value)


def test_a_missing_vhost_slash_is_the_same_vhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://guest:guest@h1:5672,amqp://guest:guest@h2:5672/")
    assert len(Settings().brokers) == 2


def test_queue_type_is_classic_unless_quorum_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().QUEUE_TYPE == "classic"
    monkeypatch.setenv("QUEUE_TYPE", "quorum")
    assert Settings().QUEUE_TYPE == "quorum"
    monkeypatch.setenv("QUEUE_TYPE", "stream")
    with pytest.raises(ValidationError, match="QUEUE_TYPE"):
        Settings()
