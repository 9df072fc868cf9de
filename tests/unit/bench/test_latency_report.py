"""The latency section's verdict on a rate and its table: the broker's version on every row, and no
percentiles printed for a rate the pipeline did not keep up with."""

import pytest

from bench.broker import COMPOSE_BROKER_IMAGE, redacted
from bench.latency import sustained
from bench.report import report
from tests.deploy_files import COMPOSE_FILE, load_compose


def row(broker: str, version: str, offered: float, verdict: str, p99: float) -> dict[str, object]:
    return {
        "broker": broker,
        "broker_version": version,
        "offered_per_s": offered,
        "seconds": 30.0,
        "samples": int(offered * 30),
        "requests": 3000,
        "achieved_per_s": offered,
        "completed_per_s": offered if verdict == "yes" else offered / 2,
        "backlog_at_end": 5 if verdict == "yes" else 12_345,
        "drain_s": 0.01,
        "sustained": verdict,
        "rows_seen": int(offered * 30),
        "p50_ms": 8.4,
        "p95_ms": 10.5,
        "p99_ms": p99,
        "max_ms": 43.7,
        "machine_busy_cores": 1.23,
        "services_cores": 0.45,
        "load_1m": 2.5,
    }


@pytest.mark.parametrize(
    ("achieved", "written", "complete", "verdict"),
    [
        (1000.0, 999.7, True, "yes"),
        (1000.0, 950.0, True, "yes"),
        (1000.0, 949.0, True, "no: rows written at 949/s"),
        (700.0, 700.0, True, "no: offered only 700/s"),
        (1000.0, 1000.0, False, "no: rows never came"),
    ],
)
def test_a_rate_is_sustained_only_when_offered_and_written_at_95_percent(
    achieved: float, written: float, complete: bool, verdict: str
) -> None:
    assert sustained(1000.0, achieved, written, complete) == verdict


def test_the_table_has_the_broker_version_on_every_row_and_no_percentiles_where_the_rate_was_not_kept() -> None:
    results = {
        "started_at": "2026-12-07T19:30:00+00:00",
        "argv": "--only latency",
        "latency": [
            row("host", "3.10.8", 200.0, "yes", 12.3),
            row("host", "3.10.8", 1000.0, "no: rows written at 500/s", 987.6),
            row("container rabbitmq:4.4-management", "4.0.5", 200.0, "yes", 11.1),
        ],
    }
    lines = report(results).splitlines()
    table = [line for line in lines if line.startswith("| ") and "offered" not in line]
    machine = " | 1.23 | 0.45 | 2.5 |"
    assert table == [
        "| 3.10.8 (host) | 200 | 200 | 200 | yes | 5 | 30 | 6,000 | 8.4 | 10.5 | 12.3 | 43.7" + machine,
        "| 3.10.8 (host) | 1,000 | 1,000 | 500 | no: rows written at 500/s | 12,345 | 30 | 30,000 | – | – | – | –" + machine,
        "| 4.0.5 (container rabbitmq:4.4-management) | 200 | 200 | 200 | yes | 5 | 30 | 6,000 | 8.4 | 10.5 | 11.1 | 43.7"
        + machine,
    ]
    heading = next(line for line in lines if line.startswith("**Latency**"))
    assert "RabbitMQ 3.10.8 (host), 4.0.5 (container rabbitmq:4.4-management)" in heading


def test_the_container_broker_is_the_image_the_compose_stack_runs() -> None:
    assert load_compose(COMPOSE_FILE)["services"]["rabbitmq"]["image"] == COMPOSE_BROKER_IMAGE


def test_a_url_in_the_report_never_shows_its_password() -> None:
    assert redacted("amqp://bench:s3cret@127.0.0.1:40123/") == "amqp://bench:***@127.0.0.1:40123/"
    assert redacted("amqp://localhost/") == "amqp://localhost/"
