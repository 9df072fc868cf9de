"""metric_log.csv deleted, truncated and rotated while the real pipeline writes it, on the real
broker: at the end every acked sample has its row, exactly once, in one file. And the count of
dead-lettered messages survives a restart of metric_api."""

import asyncio
import functools
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aio_pika
import httpx
import pytest

from harness.checker import check, row_ids
from harness.pipeline import Pipeline, running_pipeline
from harness.processes import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

BURST = 600  # per damage: in flight while the file is damaged


def delete(csv: Path) -> None:
    csv.unlink()


def truncate(csv: Path) -> None:
    csv.write_bytes(b"")  # : > metric_log.csv


def rotate(csv: Path) -> None:
    csv.rename(csv.with_name(csv.name + ".1"))  # logrotate without copytruncate


def joined(pipeline: Pipeline) -> int:
    """Rows metric_api has written (its summary's count)."""
    count: int = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()["count"]
    return count


def joined_at_least(pipeline: Pipeline, count: int) -> bool:
    return joined(pipeline) >= count


def repairs(pipeline: Pipeline) -> float:
    metrics = httpx.get(f"{pipeline.url('metric_api')}/metrics").text
    found = re.search(r"^metric_files_repaired_total (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def repaired_at_least(pipeline: Pipeline, count: int) -> bool:
    return repairs(pipeline) >= count


def test_every_acked_row_is_in_the_csv_once_after_it_is_deleted_truncated_and_rotated_mid_stream(
    tmp_path: Path, model_path: Path, amqp_url: str
) -> None:
    with running_pipeline(tmp_path, model_path, amqp_url) as pipeline, ThreadPoolExecutor(max_workers=1) as pool:
        csv = pipeline.csv
        ids: list[str] = []
        for number, damage in enumerate((delete, truncate, rotate), start=1):
            burst = pool.submit(pipeline.burst, BURST, 120)
            seen = len(ids)
            wait_until(
                functools.partial(joined_at_least, pipeline, seen + 50), 60, f"rows of the burst before the {damage.__name__}"
            )
            damage(csv)
            ids += burst.result()
            wait_until(
                functools.partial(joined_at_least, pipeline, len(ids)), 60, f"metric_api to join the {damage.__name__}'s burst"
            )
            # Each damage repaired before the next: by the next write, or by the file watch (every 2 s) when the
            # burst was all written before the damage (a fast pipeline: it was once, and two damages met in one repair).
            wait_until(functools.partial(repaired_at_least, pipeline, number), 30, f"the {damage.__name__} to be repaired")
        wait_until(lambda: len(row_ids(csv)) >= len(ids), 30, "a row for every id in the file")
        verdict = check(ids, csv)
        assert verdict.exact and verdict.rows == len(ids) == 3 * BURST, verdict
        assert repairs(pipeline) >= 3
        health = httpx.get(f"{pipeline.url('metric_api')}/health").json()
        assert health["status"] == "ok" and "was deleted or moved away" in health["files_repaired"]
        assert joined(pipeline) == len(ids)  # the statistics were rebuilt with the file, not counted twice
    assert csv.with_name(csv.name + ".1").exists()  # the rotated file is the user's: left alone


async def publish_raw(amqp_url: str, queue: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for body in bodies:
            await channel.default_exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), queue)


def test_the_dead_lettered_count_survives_a_restart_of_metric_api(tmp_path: Path, model_path: Path, amqp_url: str) -> None:
    with running_pipeline(tmp_path, model_path, amqp_url) as pipeline:
        poison = [b"not json", b'{"id": "1.000001", "body": 1.7e308}', b'{"id": "1.000002", "body": "151"}']
        asyncio.run(publish_raw(amqp_url, f"{pipeline.prefix}y_true", poison))

        def dead_lettered() -> int:
            summary: int = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").json()["join"]["dead_lettered"]
            return summary

        wait_until(lambda: dead_lettered() == len(poison), 30, "the poison to be dead-lettered")
        pipeline.restart("metric_api")
        assert dead_lettered() == len(poison)
