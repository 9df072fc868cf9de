"""Faults on a real three-node RabbitMQ cluster (the one `make cluster` starts): the services on
it with QUEUE_TYPE=quorum, two model_api processes and the join in SHARDS shards. Each fault —
SIGKILL of the node leading the queues mid-burst, stop_app of the node the services are on, a
full cluster restart — must end with every published id exactly once over the union of the
shards' CSVs. And a publisher on the real cluster must get through the SIGKILL of the leader
(RabbitMQ keeps nacking a channel reopened at once; ConfirmedPublisher opens a new one).

Each test prints a CLUSTER line with its figures (run with -s to see them).
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.replicas import predictions_by_replica
from harness import local_cluster as cluster
from harness.checker import Verdict
from harness.cluster import all_row_ids, brokers_in_use, merged_count, rows_per_shard, running_on_cluster, verdict
from harness.pipeline import Pipeline
from harness.processes import REPO_ROOT, wait_until
from harness.queues import connect, delete_queues, unique_prefix
from services.common.amqp.link import BrokerLink
from services.common.amqp.publisher import Outgoing
from services.common.amqp.topology import FEATURES
from services.common.settings import Settings

# A node boots in 15-60 s (the first test also waits for the whole cluster's first boot).
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(600)]

# How many shards the join is split into (METRIC_SHARDS): two metric_api processes by default.
SHARDS = int(os.environ.get("CLUSTER_TEST_SHARDS", "2"))
MODEL_REPLICAS = 2
BURST = 2000


def report(fault: str, result: Verdict, **figures: float) -> None:
    extra = "".join(f" {name} {value:.1f}s" for name, value in figures.items())
    print(
        f"\nCLUSTER {fault}: sent {result.published} rows {result.rows} lost {result.lost} "
        f"duplicated {result.duplicated} unexpected {result.unexpected}{extra}"
    )


@pytest.fixture
def cluster_up(local_cluster: str) -> str:
    """Every node up before the test (a test may leave one down: starting it here is the check
    that `make cluster` brings a node back)."""
    began = time.monotonic()
    if restarted := cluster.start():
        print(f"\nCLUSTER restarted {[n.nodename for n in restarted]} in {time.monotonic() - began:.0f}s")
    return local_cluster


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, model_path: Path, local_cluster: str) -> Iterator[Pipeline]:
    """One set of services for the module's faults, one after the other (starting seven
    processes costs half a minute on two cores): each fault is checked over every id so far."""
    assert local_cluster == cluster.URLS
    cluster.start()
    work = tmp_path_factory.mktemp("on-cluster")
    with running_on_cluster(work, model_path, shards=SHARDS, model_replicas=MODEL_REPLICAS) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def published() -> list[str]:
    """Every id the module's bursts published, in order."""
    return []


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def burst_in_background(pool: ThreadPoolExecutor, pipeline: Pipeline) -> Future[list[str]]:
    return pool.submit(pipeline.burst, BURST, 240)


def flowing(pipeline: Pipeline, rows: int = 300) -> None:
    wait_until(lambda: len(all_row_ids(pipeline)) >= rows, 90, f"{rows} rows: the stream flowing")


def all_healthy(pipeline: Pipeline) -> bool:
    return all((answer := s.health()) is not None and answer.status_code == 200 for s in pipeline.services.values())


def settled(pipeline: Pipeline, ids: list[str], timeout: float = 180) -> Verdict:
    """Wait until every id has a row over the shards and every queue is empty; the verdict
    over ``ids`` (every id the pipeline was sent)."""
    wanted = set(ids)
    wait_until(lambda: wanted <= set(all_row_ids(pipeline)), timeout, f"rows for all {len(ids)} ids")
    try:
        wait_until(lambda: all(ready == 0 for ready, _ in pipeline.queues().values()), 60, "every queue to drain")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; (ready, consumers) by queue: {pipeline.queues()}") from None
    return verdict(pipeline, ids)


def leader_of(pipeline: Pipeline) -> cluster.Node:
    """The node leading most of the pipeline's queues (all of them, as they are declared)."""
    leaders = cluster.leaders(pipeline.prefix)
    assert leaders, f"no quorum queue with prefix {pipeline.prefix}"
    return cluster.node(Counter(leaders.values()).most_common(1)[0][0])


def assert_sound(pipeline: Pipeline, result: Verdict) -> None:
    assert result.exact, result
    assert result.rows == result.published, result
    split = predictions_by_replica(pipeline)
    assert len(split) == MODEL_REPLICAS and all(count > 0 for count in split.values()), split
    if SHARDS > 1:
        per_shard = rows_per_shard(pipeline)
        assert len(per_shard) == SHARDS and all(rows >= result.rows / (2 * SHARDS) for rows in per_shard), per_shard
    wait_until(lambda: all_healthy(pipeline), 60, "every service healthy")
    # plot_api's one view over the shards (their rows over HTTP) counts every row.
    wait_until(lambda: merged_count(pipeline) == result.rows, 30, f"plot_api's merged count to be the {result.rows} rows")


@pytest.mark.usefixtures("cluster_up")
def test_a_publisher_gets_through_the_sigkill_of_the_leader() -> None:
    """The publisher connected to the node leading its queue; that node killed while it publishes:
    publishing goes on (on another node), and every message is in the queue."""
    prefix = unique_prefix()
    try:
        asyncio.run(_publish_through_a_leader_kill(prefix))
    finally:
        cluster.start()  # the killed node back first: deleting a quorum queue with a member down is slow
        delete_queues(cluster.URLS, prefix)


async def _publish_through_a_leader_kill(prefix: str) -> None:
    declaring = Settings(AMQP_URL=cluster.URLS, QUEUE_TYPE="quorum", QUEUE_PREFIX=prefix)
    queue = declaring.queue(FEATURES)
    link = BrokerLink(declaring, "declare", publishes=[queue])
    link.start()
    await link.ready()
    await link.close()
    leader = cluster.node((await asyncio.to_thread(cluster.leaders, prefix))[queue])
    # The publisher's first broker is the leader: the case RabbitMQ leaves stuck.
    first = [leader, *(node for node in cluster.NODES if node is not leader)]
    settings = Settings(AMQP_URL=",".join(node.url for node in first), QUEUE_TYPE="quorum", QUEUE_PREFIX=prefix)
    link = BrokerLink(settings, "publisher", publishes=[queue])
    link.start()
    await link.ready()
    assert link.details() == {"broker": f"127.0.0.1:{leader.port}"}
    sent: list[str] = []
    confirmed_at: list[float] = []

    async def publish_for(seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            batch = [Outgoing(queue, b"{}", f"{len(sent) + i}") for i in range(50)]
            await link.publisher.publish_many(batch)
            sent.extend(message.message_id for message in batch)
            confirmed_at.append(loop.time())
            await asyncio.sleep(0.02)  # a steady stream, not a flood to drain afterwards

    try:
        publishing = asyncio.create_task(publish_for(3))
        await publishing
        publishing = asyncio.create_task(publish_for(12))
        await asyncio.sleep(1)
        killed = asyncio.get_running_loop().time()
        await asyncio.to_thread(cluster.kill, leader, signal.SIGKILL)
        await asyncio.wait_for(publishing, 90)
        resumed = min((at for at in confirmed_at if at > killed + 0.2), default=None)
        assert resumed is not None, "nothing was confirmed after the kill"
        on = link.details()
        renewals = link.publisher.renewals
    finally:
        await link.close()
    print(
        f"\nCLUSTER publisher through SIGKILL of {leader.nodename}: {len(sent)} confirmed, first confirm "
        f"{resumed - killed:.1f}s after the kill, on {on['broker']}, {renewals} channel(s) renewed"
    )
    assert on["broker"] != f"127.0.0.1:{leader.port}"
    # RabbitMQ alone kept nacking such a channel for 43 s and more (measured); a new channel is taken at once.
    assert resumed - killed < 15, f"publishing resumed {resumed - killed:.1f}s after the kill"
    assert set(sent) <= await _ids_in(queue)


@pytest.mark.usefixtures("cluster_up")
def test_leader_node_sigkill_mid_burst(pipeline: Pipeline, published: list[str], background: ThreadPoolExecutor) -> None:
    """Issue 16's "done when": on the cluster, QUEUE_TYPE=quorum, METRIC_SHARDS=2 (two metric_api),
    two model_api; a burst with the node leading the queues SIGKILLed mid-stream and restarted ends
    with every id exactly once over both shards, each a fair share, and plot_api's count the rows."""
    leader = leader_of(pipeline)
    burst = burst_in_background(background, pipeline)
    flowing(pipeline, len(published) + 300)
    killed = time.monotonic()
    cluster.kill(leader, signal.SIGKILL)
    published += burst.result()
    result = settled(pipeline, published)
    recovered = time.monotonic() - killed
    on = brokers_in_use(pipeline)
    began = time.monotonic()
    restarted = cluster.start()  # `make cluster` with a node down starts that node
    took = time.monotonic() - began
    report(f"SIGKILL of {leader.nodename} (leader) mid-burst", result, settled_after_kill=recovered, node_restart=took)
    print(f"CLUSTER rows per shard: {rows_per_shard(pipeline)}")
    # Every service with a broker connection (all but plot_api) says it is on a surviving node.
    assert sum(on.values()) == len(pipeline.services) - 1, on
    assert f"127.0.0.1:{leader.port}" not in on, f"a service still says it is on the killed node: {on}"
    assert restarted == [leader]
    assert_sound(pipeline, result)


@pytest.mark.usefixtures("cluster_up")
def test_stop_app_of_the_node_the_services_are_on(
    pipeline: Pipeline, published: list[str], background: ThreadPoolExecutor
) -> None:
    host, port = brokers_in_use(pipeline).most_common(1)[0][0].rsplit(":", 1)
    target = next(node for node in cluster.NODES if node.port == int(port))
    was_leader = target == leader_of(pipeline)
    burst = burst_in_background(background, pipeline)
    flowing(pipeline, len(published) + 300)
    stopped = time.monotonic()
    cluster.stop_app(target)
    try:
        wait_until(lambda: f"{host}:{port}" not in brokers_in_use(pipeline), 60, "every service to leave the stopped node")
        failed_over = time.monotonic() - stopped
    finally:
        restarted = cluster.start()  # `make cluster` with a node's app stopped starts it (start_app)
    assert restarted == [target]
    published += burst.result()
    result = settled(pipeline, published)
    report(
        f"stop_app of {target.nodename} ({'leader' if was_leader else 'follower'}, the services' broker), then make cluster",
        result,
        failover=failed_over,
    )
    assert_sound(pipeline, result)


@pytest.mark.usefixtures("cluster_up")
def test_full_cluster_restart_mid_burst(pipeline: Pipeline, published: list[str], background: ThreadPoolExecutor) -> None:
    burst = burst_in_background(background, pipeline)
    flowing(pipeline, len(published) + 300)
    # Every sample confirmed by the cluster first: with no node up, POST /features/publish answers
    # 503 (nothing to publish to), and the ids of a refused request are not known. The stream is
    # still in the queues, the model_api's and the join's hands when the nodes go.
    sent = burst.result()
    in_at_stop = len(all_row_ids(pipeline)) - len(published)
    began = time.monotonic()
    cluster.stop(remove_data=False)
    wait_until(lambda: not all_healthy(pipeline), 30, "the services to notice the cluster is gone")
    cluster.start()
    restarted = time.monotonic() - began
    wait_until(lambda: all_healthy(pipeline), 90, "every service healthy again")
    published += sent
    result = settled(pipeline, published)
    report(f"full cluster restart (all nodes stopped, then started; {in_at_stop} of {BURST} rows in)", result, restart=restarted)
    assert_sound(pipeline, result)


TAKE_TIMEOUT_S = 60.0  # to take a queue's messages, once it says how many it holds


async def _ids_in(queue: str) -> set[str]:
    """The message ids of everything in ``queue`` (consumed with a large prefetch: a Basic.Get each is slow).
    An empty queue answers at once; a queue that stops delivering before its count fails, saying so."""
    connection = await connect(cluster.URLS)
    found: set[str] = set()
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=5000)
        amqp_queue = await channel.declare_queue(queue, passive=True)
        total = amqp_queue.declaration_result.message_count or 0
        if total == 0:
            return found
        taken = 0
        try:
            async with asyncio.timeout(TAKE_TIMEOUT_S), amqp_queue.iterator(no_ack=True) as messages:
                async for message in messages:
                    found.add(message.message_id or "")
                    taken += 1
                    if taken == total:
                        break
        except TimeoutError:
            raise AssertionError(f"{queue} said it held {total} messages, {taken} came within {TAKE_TIMEOUT_S:g} s") from None
    return found


@pytest.mark.usefixtures("cluster_up")
def test_the_benchmarks_cluster_section_runs() -> None:
    """`python -m bench.cluster` with a tiny burst: classic on the single broker, quorum on the cluster."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.cluster", "--cluster-samples", "200"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    table = [line for line in done.stdout.splitlines() if line.startswith(("| single broker", "| cluster of 3"))]
    assert [line.split("|")[2].strip() for line in table] == ["classic", "quorum"], done.stdout
    assert len(cluster.running()) == len(cluster.NODES)  # a cluster it did not start, it leaves running
