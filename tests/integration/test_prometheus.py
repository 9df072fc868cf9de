"""deploy/prometheus and deploy/grafana for real: a real Prometheus (Debian's package) scrapes the real
services on the real broker with this system's rules (every ``for:`` cut to a second, evaluated each
second: harness/prometheus.py); a poison message and a drifted window make MessagesDeadLettered and
ModelDrift fire in its API, and every PromQL of the Grafana dashboard is asked of it after that traffic.

The host's broker has no rabbitmq_prometheus plugin (Debian's 3.10, plugins as installed): the rules
and panels on the broker's own series (DLQ depth, consumers per queue, the broker up) are checked here
only to evaluate without error; promtool's rule tests (tests/test_prometheus_rules.py) cover their logic.
"""

import asyncio
import functools
import json
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import httpx
import pytest

from harness.pipeline import Pipeline, running_pipeline
from harness.processes import REPO_ROOT, wait_until
from harness.prometheus import Prometheus, PrometheusMissing, panel_queries

pytestmark = [pytest.mark.broker, pytest.mark.slow]
WINDOW = 300  # DRIFT_WINDOW_SIZE's default
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "model-quality-monitor.json"
# The broker plugin's series, and what is made of them: not scraped here (see above).
BROKER_SERIES = ("rabbitmq_", 'job="rabbitmq"', "monitor:dlq_messages")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, model_path: Path, amqp_url: str) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path_factory.mktemp("prometheus"), model_path, amqp_url) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, pipeline: Pipeline) -> Iterator[Prometheus]:
    targets = {name: [f"127.0.0.1:{service.port}"] for name, service in pipeline.services.items()}
    try:
        with Prometheus(tmp_path_factory.mktemp("prometheus-server"), targets) as server:
            yield server
    except PrometheusMissing as exc:
        pytest.fail(str(exc))


def seen(pipeline: Pipeline, count: int) -> bool:
    return httpx.get(f"{pipeline.url('model_api')}/drift").json()["window"]["seen"] >= count


async def publish_poison(amqp_url: str, queue: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"not json at all"), routing_key=queue)


@pytest.fixture(scope="module")
def traffic(pipeline: Pipeline, prometheus: Prometheus) -> dict[str, list[dict[str, str]]]:
    """Every service scraped; calm samples, a poison message, then a drifted window: the alerts fired."""
    wait_until(lambda: all(prometheus.targets_up().values()) and len(prometheus.targets_up()) == 4, 30, "the 4 targets up")
    # A calm, healthy system fires nothing (once every target has been scraped and the rules evaluated
    # again: before its first scrape a service has no `up`, and ServiceDown's absent() is true).
    wait_until(lambda: prometheus.firing() == {}, 10, "no alert firing once every target is up")
    pipeline.burst(WINDOW)
    wait_until(functools.partial(seen, pipeline, WINDOW), 30, "model_api to see the calm samples")
    asyncio.run(publish_poison(pipeline.amqp_url, f"{pipeline.prefix}features"))
    features = pipeline.url("features_api")
    assert httpx.post(f"{features}/features/scenario", json={"shift": {"bmi": 1.0}}).status_code == 200
    pipeline.burst(WINDOW)
    wait_until(functools.partial(seen, pipeline, 2 * WINDOW), 30, "model_api to see the shifted samples")
    pipeline.wait_all_joined()
    return wait_until(
        lambda: (firing := prometheus.firing()) and {"MessagesDeadLettered", "ModelDrift"} <= set(firing) and firing,
        30,
        "MessagesDeadLettered and ModelDrift to fire in Prometheus",
    )


def test_a_dead_lettered_message_and_a_drift_each_fire_their_alert_in_prometheus(
    pipeline: Pipeline, traffic: dict[str, list[dict[str, str]]]
) -> None:
    [dead_lettered] = traffic["MessagesDeadLettered"]
    assert (dead_lettered["queue"], dead_lettered["severity"]) == (f"{pipeline.prefix}features", "warning")
    [drift] = traffic["ModelDrift"]
    assert drift["instance"] == f"127.0.0.1:{pipeline.services['model_api'].port}"
    # Nothing says a service is unwell. (ModelErrorRose may fire: bmi shifted by a std with its labels kept
    # makes the model really worse, by about the CUSUM's +20 %, so whether it fires in time is not asserted.)
    assert not {"ServiceDown", "ServiceNotReady", "RowsStopped"} & set(traffic), traffic


@pytest.mark.usefixtures("traffic")
def test_every_panel_of_the_grafana_dashboard_queries_what_exists(prometheus: Prometheus) -> None:
    queries = panel_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 20
    empty = []
    for title, expr in queries:
        result = prometheus.query(expr)  # an expression Prometheus refuses fails here, with its error
        if not result and not any(series in expr for series in BROKER_SERIES):
            empty.append(f"{title}: {expr}")
    assert empty == [], "panels that show nothing after traffic:\n" + "\n".join(empty)
