"""The cluster section of the benchmark: ``python -m bench.cluster`` alone, or ``python -m bench.run --cluster``.

The same burst through the same services (features_api, ``--cluster-replicas`` model_api
processes, one metric_api per shard, plot_api), measured as the throughput section measures it:

- the baseline: classic queues on the single broker (AMQP_URL);
- quorum queues on the local three-node cluster (harness/local_cluster.py, what ``make cluster``
  starts; started here when it is not running, and stopped again afterwards), for each shard
  count of ``--cluster-shards`` (METRIC_SHARDS: one metric_api per shard).

Every id must come out exactly once over the shards' CSVs, or the run reports a problem.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.progress import finish, say, start
from bench.report import md_table
from bench.throughput import throughput
from harness import local_cluster as cluster
from harness.cluster import rows_per_shard, running_on_cluster
from harness.pipeline import running_pipeline
from services.common.settings import Settings
from services.model_api.train import train

PIPELINE_ENV = {"FEATURES_INTERVAL_S": "3600", "PLOT_INTERVAL_S": "10"}


def cluster_section(
    work: Path, model_path: Path, amqp_url: str, samples: int, shards: list[int], replicas: int, problems: list[str]
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    say(f"cluster: baseline, classic queues on the single broker, {replicas} model_api")
    single = work / "single-broker"
    single.mkdir()
    with running_pipeline(single, model_path, amqp_url, model_replicas=replicas, QUEUE_TYPE="classic", **PIPELINE_ENV) as p:
        runs.append({"broker": "single broker", "queue_type": "classic", "shards": 1, **throughput(p, None, samples, problems)})
    was_up = len(cluster.running()) == len(cluster.NODES)
    began = time.monotonic()
    say("cluster: starting the local three-node cluster" if not was_up else "cluster: the local cluster is up")
    cluster.start()
    boot_s = time.monotonic() - began
    try:
        for count in shards:
            say(f"cluster: quorum queues on three nodes, {count} shard(s), {replicas} model_api")
            folder = work / f"cluster-{count}-shards"
            folder.mkdir()
            with running_on_cluster(folder, model_path, shards=count, model_replicas=replicas, **PIPELINE_ENV) as p:
                pids = {node.name: cluster.pid(node) for node in cluster.NODES}
                result = throughput(p, None, samples, problems, broker_pids=pids)
                result["rows_per_shard"] = rows_per_shard(p)
                runs.append({"broker": "cluster of 3", "queue_type": "quorum", "shards": count, **result})
    finally:
        if not was_up:
            say("cluster: stopping the cluster it started")
            cluster.stop()
    return {"samples": samples, "model_replicas": replicas, "cluster_boot_s": round(boot_s, 1), "runs": runs}


def broker_cpu_ms(run: dict[str, Any]) -> float | None:
    """The broker's CPU per sample: the one node's, or the sum over the cluster's nodes."""
    cpu = run.get("cpu_ms_per_sample", {})
    names = ["rabbitmq"] if run["broker"] == "single broker" else [node.name for node in cluster.NODES]
    values = [cpu[name] for name in names if cpu.get(name) is not None]
    return round(sum(values), 3) if values else None


def cluster_report(section: dict[str, Any]) -> str:
    runs = section["runs"]
    lines = [
        (
            f"**Cluster** — one burst of {section['samples']:,} samples through features_api, "
            f"{section['model_replicas']} model_api processes, one metric_api per shard and plot_api: classic "
            "queues on the single broker, then quorum queues on the local three-node cluster (all on this machine)."
        ),
        "",
        md_table(
            [
                "broker",
                "queues",
                "shards",
                "end-to-end samples/s",
                "publish-only samples/s",
                "broker CPU ms/sample",
                "rows per shard",
                "lost",
                "duplicated",
                "unexpected",
            ],
            [
                [
                    run["broker"],
                    run["queue_type"],
                    run["shards"],
                    run["samples_per_s"],
                    run["publish_samples_per_s"],
                    broker_cpu_ms(run),
                    " / ".join(str(rows) for rows in run.get("rows_per_shard", [run["rows"]])),
                    run["lost"],
                    run["duplicated"],
                    run["unexpected"],
                ]
                for run in runs
            ],
        ),
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster-samples", type=int, default=20_000, help="samples per cluster-section burst (20000)")
    parser.add_argument(
        "--cluster-shards",
        type=lambda text: [int(part) for part in text.split(",") if part.strip()],
        default=[1],
        help="shard counts (METRIC_SHARDS) to measure on the cluster, e.g. 1,2 (1)",
    )
    parser.add_argument("--cluster-replicas", type=int, default=2, help="model_api processes (2)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    amqp_url = str(Settings().AMQP_URL)
    if not start("bench.cluster", amqp_url, starts_one="make broker"):
        return 1
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as folder:
        work = Path(folder)
        model_path = work / "myfile.pkl"
        train(model_path)
        section = cluster_section(
            work, model_path, amqp_url, args.cluster_samples, args.cluster_shards, args.cluster_replicas, problems
        )
    print()
    print(cluster_report(section))
    return finish("bench.cluster", problems)


if __name__ == "__main__":
    sys.exit(main())
