"""The pipeline on the local three-node RabbitMQ cluster (harness/local_cluster.py): quorum
queues, several model_api processes, and the join split into ``shards`` metric_api processes
(METRIC_SHARDS/METRIC_SHARD, each with its own LOGS_DIR and port; plot_api reads them all)."""

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx

from harness import local_cluster as cluster
from harness.checker import Verdict, check_all, row_ids
from harness.pipeline import Pipeline, running_pipeline
from harness.processes import ServiceProcess, free_port
from services.common.files import METRIC_LOG
from services.metric_api.merge import with_rotated


@contextlib.contextmanager
def running_on_cluster(
    work_dir: Path, model_path: Path, *, shards: int = 1, model_replicas: int = 2, **settings: str
) -> Iterator[Pipeline]:
    """The services on the local cluster (which must be up), QUEUE_TYPE=quorum (see ``running_sharded``)."""
    with running_sharded(
        work_dir, model_path, cluster.URLS, shards=shards, model_replicas=model_replicas, QUEUE_TYPE="quorum", **settings
    ) as pipeline:
        yield pipeline


@contextlib.contextmanager
def running_sharded(
    work_dir: Path, model_path: Path, amqp_url: str, *, shards: int, model_replicas: int = 1, **settings: str
) -> Iterator[Pipeline]:
    """The services with the join split into ``shards`` metric_api processes (METRIC_SHARDS).

    ``services["metric_api"]`` owns shard 0 (LOGS_DIR ``work_dir/logs``, as in every pipeline);
    ``services["metric_api-<k>"]`` owns shard k, its LOGS_DIR ``work_dir/metric_api-<k>/logs``;
    plot_api's METRIC_API_URL lists them all.
    """
    ports = [free_port() for _ in range(shards)]
    with running_pipeline(
        work_dir,
        model_path,
        amqp_url,
        model_replicas=model_replicas,
        METRIC_SHARDS=str(shards),
        METRIC_SHARD="0",
        METRIC_PORT=str(ports[0]),
        METRIC_API_URL=",".join(f"http://127.0.0.1:{port}" for port in ports),
        **settings,
    ) as pipeline:
        base = pipeline.services["metric_api"].env
        for shard in range(1, shards):
            shard_dir = work_dir / f"metric_api-{shard}"
            (shard_dir / "logs").mkdir(parents=True, exist_ok=True)
            env = {**base, "METRIC_SHARD": str(shard), "METRIC_PORT": str(ports[shard]), "LOGS_DIR": str(shard_dir / "logs")}
            pipeline.services[f"metric_api-{shard}"] = ServiceProcess("metric_api", env, shard_dir).start()
        for shard in range(1, shards):
            pipeline.services[f"metric_api-{shard}"].wait_healthy()
        yield pipeline


def start_standby(pipeline: Pipeline, shard: int) -> ServiceProcess:
    """A second metric_api of shard ``shard`` (its key ``metric_api-<shard>-standby``): the same
    LOGS_DIR and queues as the shard's, its own port and log file."""
    owner = pipeline.services["metric_api" if shard == 0 else f"metric_api-{shard}"]
    log_dir = owner.log_path.parent / f"standby-{shard}"
    log_dir.mkdir(exist_ok=True)
    standby = ServiceProcess("metric_api", {**owner.env, "METRIC_PORT": str(free_port())}, log_dir).start()
    pipeline.services[f"metric_api-{shard}-standby"] = standby
    standby.wait_healthy()
    return standby


def merged_count(pipeline: Pipeline) -> int | None:
    """The count plot_api's /api/summary gives over every shard (None if it does not answer)."""
    with contextlib.suppress(httpx.HTTPError, ValueError):
        answer = httpx.get(f"{pipeline.url('plot_api')}/api/summary", timeout=10)
        if answer.status_code == 200:
            count: int = answer.json()["count"]
            return count
    return None


def shard_csvs(pipeline: Pipeline) -> list[Path]:
    """Each shard's metric_log.csv, shard 0 first (a standby writes its shard's)."""
    return list(dict.fromkeys(Path(service.env["LOGS_DIR"]) / METRIC_LOG for service in pipeline.replicas("metric_api")))


def all_row_ids(pipeline: Pipeline) -> list[str]:
    """Every row's id over all the shards' CSVs."""
    return [sample_id for csv in with_rotated(shard_csvs(pipeline)) for sample_id in row_ids(csv)]


def verdict(pipeline: Pipeline, published: list[str]) -> Verdict:
    """Lost, duplicated and unexpected ids over the union of the shards' CSVs."""
    return check_all(published, shard_csvs(pipeline))


def rows_per_shard(pipeline: Pipeline) -> list[int]:
    return [sum(len(row_ids(path)) for path in with_rotated([csv])) for csv in shard_csvs(pipeline)]


def brokers_in_use(pipeline: Pipeline) -> Counter[str]:
    """How many services are connected to each broker (host:port), as their /health says."""
    found: Counter[str] = Counter()
    for service in pipeline.services.values():
        with contextlib.suppress(httpx.HTTPError):
            if broker := httpx.get(f"{service.url}/health", timeout=5).json().get("broker"):
                found[broker] += 1
    return found
