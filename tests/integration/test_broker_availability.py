"""Services start without a broker, say why in /health, and connect once it appears."""

import functools
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic_core import Url

from harness.processes import (
    PORT_SETTING,
    REPO_ROOT,
    ServiceProcess,
    free_port,
    run_to_exit,
    service_env,
    stop_all,
    wait_until,
)
from harness.proxy import TcpProxy

pytestmark = [pytest.mark.broker, pytest.mark.slow]
BROKER_SERVICES = ("features_api", "model_api", "metric_api")


def services_at(amqp_url: str, prefix: str, tmp_path: Path, model_path: Path) -> list[ServiceProcess]:
    env = service_env(
        AMQP_URL=amqp_url,
        QUEUE_PREFIX=prefix,
        LOGS_DIR=str(tmp_path / "logs"),
        MODEL_PATH=str(model_path),
        FEATURES_INTERVAL_S="3600",
        **{setting: str(free_port()) for setting in PORT_SETTING.values()},
    )
    return [ServiceProcess(name, env, tmp_path) for name in BROKER_SERVICES]


def unavailable_reason(service: ServiceProcess, saying: str) -> str | None:
    """The reason in the service's 503, if it says ``saying``."""
    answer = service.health()
    if answer is None or answer.status_code != 503:
        return None
    reason: str = answer.json()["reason"]
    return reason if saying in reason else None


def test_services_start_without_a_broker_and_connect_when_it_appears(
    amqp_url: str, queue_prefix: str, tmp_path: Path, model_path: Path
) -> None:
    broker_port = Url(amqp_url).port or 5672
    proxy_port = free_port()  # nothing listens here yet: the broker is "down"
    services = services_at(f"amqp://guest:guest@127.0.0.1:{proxy_port}/", queue_prefix, tmp_path, model_path)
    for service in services:
        service.start()
    proxy = None
    try:
        for service in services:
            reason = wait_until(
                functools.partial(unavailable_reason, service, "not reachable"), 30, f"{service.name}'s 503 to say why"
            )
            assert f"127.0.0.1:{proxy_port}" in reason, reason
        burst = httpx.post(f"{services[0].url}/features/publish", json={"count": 1})
        assert burst.status_code == 503 and "not reachable" in burst.json()["detail"]

        proxy = TcpProxy(broker_port, listen_port=proxy_port).start()  # the broker "appears"
        for service in services:
            service.wait_healthy(timeout=30)

        proxy.cut()  # every connection dropped, broker still up: they reconnect by themselves
        for service in services:
            service.wait_healthy(timeout=30)
        assert httpx.post(f"{services[0].url}/features/publish", json={"count": 5}, timeout=30).status_code == 200
    finally:
        try:
            stop_all(services)
        finally:
            if proxy is not None:
                proxy.close()


def test_wrong_credentials_are_named_in_health(amqp_url: str, queue_prefix: str, tmp_path: Path, model_path: Path) -> None:
    url = Url(amqp_url)
    bad = f"amqp://guest:not-the-password@{url.host}:{url.port or 5672}/"
    service = services_at(bad, queue_prefix, tmp_path, model_path)[-1].start()
    try:
        # Before its first attempt is answered the reason is "connecting ..."; then it names the refusal.
        reason = wait_until(lambda: unavailable_reason(service, "refused"), 30, "metric_api's 503 to name the refusal")
        assert "refused the login of user 'guest'" in reason and "AMQP_URL" in reason, reason
    finally:
        stop_all([service])


def test_model_api_refuses_to_start_without_its_model_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "myfile.pkl"
    result = run_to_exit("model_api", service_env(MODEL_PATH=str(missing), MODEL_PORT=str(free_port())))
    assert result.returncode != 0
    assert str(missing) in result.stderr and "python -m services.model_api.train" in result.stderr
    assert "Traceback" not in result.stderr


def test_ensure_broker_says_what_is_wrong_in_one_line(amqp_url: str) -> None:
    url = Url(amqp_url)

    def ensure(broker_url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.common.ensure_broker"],
            cwd=REPO_ROOT,
            env=service_env(AMQP_URL=broker_url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert ensure(amqp_url).returncode == 0
    refused = ensure(f"amqp://guest:wrong@{url.host}:{url.port or 5672}/")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "refused the login of user 'guest'" in refused.stderr
    # 127.0.0.2 is this machine, but not the default broker address: nothing is started there.
    elsewhere = ensure(f"amqp://guest:guest@127.0.0.2:{free_port()}/")
    assert elsewhere.returncode == 1 and "no RabbitMQ answers at 127.0.0.2" in elsewhere.stderr
