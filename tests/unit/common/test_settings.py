from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.settings import Settings

CONTRACT_VARIABLES = (
    "AMQP_URL",
    "QUEUE_PREFIX",
    "LOGS_DIR",
    "FEATURES_INTERVAL_S",
    "PLOT_INTERVAL_S",
    "MODEL_PATH",
    "FEATURES_PORT",
    "MODEL_PORT",
    "METRIC_PORT",
    "PLOT_PORT",
    "METRIC_API_URL",
    "METRIC_SHARDS",
    "METRIC_SHARD",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the shell running the tests exports must not leak into these tests."""
    for name in CONTRACT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_equal_the_contract_table() -> None:
    settings = Settings()
    assert str(settings.AMQP_URL) == "amqp://guest:guest@localhost:5672/"
    assert settings.QUEUE_PREFIX == ""
    assert settings.LOGS_DIR == Path("logs")
    assert settings.FEATURES_INTERVAL_S == 10
    assert settings.PLOT_INTERVAL_S == 10
    assert settings.MODEL_PATH == Path("services/model_api/myfile.pkl")
    assert (settings.FEATURES_PORT, settings.MODEL_PORT, settings.METRIC_PORT, settings.PLOT_PORT) == (
        8001,
        8002,
        8003,
        8004,
    )
    (url,) = settings.metric_apis
    assert (url.scheme, url.host, url.port, url.path in ("", "/")) == ("http", "localhost", 8003, True)


def test_environment_overrides_every_contract_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "AMQP_URL": "amqps://user:secret@broker.example:5671/vhost",
        "QUEUE_PREFIX": "t123.",
        "LOGS_DIR": str(tmp_path / "logs"),
        "FEATURES_INTERVAL_S": "0.25",
        "PLOT_INTERVAL_S": "2.5",
        "MODEL_PATH": str(tmp_path / "model.pkl"),
        "FEATURES_PORT": "9001",
        "MODEL_PORT": "9002",
        "METRIC_PORT": "9003",
        "PLOT_PORT": "9004",
        "METRIC_API_URL": "http://metric:9003",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    (url,) = settings.brokers
    assert (url.scheme, url.username, url.password, url.host, url.port, url.path) == (
        "amqps",
        "user",
        "secret",
        "broker.example",
        5671,
        "/vhost",
    )
    assert settings.QUEUE_PREFIX == "t123."
    assert settings.LOGS_DIR == tmp_path / "logs"
    assert settings.FEATURES_INTERVAL_S == 0.25
    assert settings.PLOT_INTERVAL_S == 2.5
    assert settings.MODEL_PATH == tmp_path / "model.pkl"
    assert (settings.FEATURES_PORT, settings.MODEL_PORT, settings.METRIC_PORT, settings.PLOT_PORT) == (
        9001,
        9002,
        9003,
        9004,
    )
    (metric_api,) = settings.metric_apis
    assert (metric_api.host, metric_api.port) == ("metric", 9003)


def test_zero_features_interval_means_as_fast_as_possible_and_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURES_INTERVAL_S", "0")
    assert Settings().FEATURES_INTERVAL_S == 0


def test_an_empty_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURES_INTERVAL_S", "")
    monkeypatch.setenv("AMQP_URL", "")
    settings = Settings()
    assert settings.FEATURES_INTERVAL_S == 10
    assert str(settings.AMQP_URL) == "amqp://guest:guest@localhost:5672/"


@pytest.mark.parametrize(
    "url",
    ["http://guest:guest@localhost:5672/", "redis://localhost:6379", "localhost:5672", "amqp://", "not a url"],
)
def test_a_non_amqp_url_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("AMQP_URL", url)
    with pytest.raises(ValidationError, match="AMQP_URL"):
        Settings()


@pytest.mark.parametrize("value", ["-1", "-0.001", "ten"])
def test_a_negative_or_non_numeric_features_interval_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FEATURES_INTERVAL_S", value)
    with pytest.raises(ValidationError, match="FEATURES_INTERVAL_S"):
        Settings()


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_plot_interval_that_is_not_positive_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PLOT_INTERVAL_S", value)
    with pytest.raises(ValidationError, match="PLOT_INTERVAL_S"):
        Settings()


@pytest.mark.parametrize("value", ["0", "65536", "-1", "http"])
@pytest.mark.parametrize("name", ["FEATURES_PORT", "MODEL_PORT", "METRIC_PORT", "PLOT_PORT"])
def test_an_impossible_port_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        Settings()


def test_a_metric_api_url_that_is_not_http_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRIC_API_URL", "amqp://localhost:8003")
    with pytest.raises(ValidationError, match="METRIC_API_URL"):
        Settings()


def test_queue_without_prefix_is_the_base_name() -> None:
    settings = Settings()
    assert [settings.queue(q) for q in ("features", "y_true", "y_pred")] == ["features", "y_true", "y_pred"]


def test_queue_applies_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUE_PREFIX", "test-42.")
    settings = Settings()
    assert settings.queue("features") == "test-42.features"
    assert settings.queue("y_true") == "test-42.y_true"
    assert settings.queue("y_pred") == "test-42.y_pred"


@pytest.mark.parametrize("prefix", ["has space", "slash/", "new\nline"])
def test_a_prefix_that_is_not_a_queue_name_part_is_refused(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    monkeypatch.setenv("QUEUE_PREFIX", prefix)
    with pytest.raises(ValidationError, match="QUEUE_PREFIX"):
        Settings()


@pytest.mark.parametrize(("value", "allowed"), [("1", True), ("true", True), ("0", False), ("", False)])
def test_model_allow_unverified_is_off_unless_set(monkeypatch: pytest.MonkeyPatch, value: str, allowed: bool) -> None:
    monkeypatch.setenv("MODEL_ALLOW_UNVERIFIED", value)
    assert Settings().MODEL_ALLOW_UNVERIFIED is allowed


def test_model_allow_unverified_refuses_a_non_boolean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ALLOW_UNVERIFIED", "maybe")
    with pytest.raises(ValidationError, match="MODEL_ALLOW_UNVERIFIED"):
        Settings()


def test_the_drift_window_and_plot_apis_model_url_default_as_documented_and_refuse_nonsense(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DRIFT_WINDOW_SIZE", "DRIFT_WINDOW_S", "MODEL_API_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.DRIFT_WINDOW_SIZE, settings.DRIFT_WINDOW_S) == (300, 3600.0)
    assert (settings.MODEL_API_URL.host, settings.MODEL_API_URL.port) == ("localhost", 8002)
    for name, value in (("DRIFT_WINDOW_SIZE", "29"), ("DRIFT_WINDOW_S", "0"), ("DRIFT_WINDOW_S", "inf"), ("MODEL_API_URL", "x")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError, match=name):
            Settings()
        monkeypatch.delenv(name)


def test_the_join_has_one_shard_by_default() -> None:
    settings = Settings()
    assert (settings.METRIC_SHARDS, settings.METRIC_SHARD) == (1, 0)


def test_a_metric_api_owns_one_of_the_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRIC_SHARDS", "3")
    monkeypatch.setenv("METRIC_SHARD", "2")
    assert (Settings().METRIC_SHARDS, Settings().METRIC_SHARD) == (3, 2)


@pytest.mark.parametrize(
    ("shards", "shard", "message"),
    [
        ("2", "2", "METRIC_SHARD=2 is not a shard of METRIC_SHARDS=2: the shards are numbered 0 to 1"),
        ("1", "1", "METRIC_SHARD=1 is not a shard of METRIC_SHARDS=1"),
        ("0", "0", "METRIC_SHARDS"),
        ("two", "0", "METRIC_SHARDS"),
        ("2", "-1", "METRIC_SHARD"),
        ("2000", "0", "METRIC_SHARDS"),
    ],
)
def test_an_impossible_shard_is_refused_naming_the_settings(
    monkeypatch: pytest.MonkeyPatch, shards: str, shard: str, message: str
) -> None:
    monkeypatch.setenv("METRIC_SHARDS", shards)
    monkeypatch.setenv("METRIC_SHARD", shard)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_metric_api_url_lists_the_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRIC_API_URL", "http://shard0:8003, http://shard1.example:9003")
    assert [(url.host, url.port) for url in Settings().metric_apis] == [("shard0", 8003), ("shard1.example", 9003)]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://a:8003,,http://b:8003", "an empty entry"),
        ("http://a:8003,http://a:8003", "listed twice"),
        ("http://a:8003,ftp://b", "URL scheme"),
    ],
)
def test_a_bad_list_of_metric_apis_is_refused(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv("METRIC_API_URL", value)
    with pytest.raises(ValidationError, match=message):
        Settings()
