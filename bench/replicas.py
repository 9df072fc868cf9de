"""Model replicas without Docker: ``python -m bench.replicas [--replicas 3] [--samples 20000]``.

What `docker compose -f deploy/compose.yml -f deploy/compose.scale.yml up` runs, as plain
processes: features_api, metric_api, plot_api and N model_api processes (each on its own
port) on one QUEUE_PREFIX, the real RabbitMQ. One burst of samples goes in; it prints the
end-to-end time, the lost/duplicated/unexpected ids of the CSV, and how many predictions
each replica made (its own ``predictions_total{path="queue"}`` from /metrics).

Exits 1 when an id is lost, duplicated or unexpected, or a replica made no prediction.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.progress import finish, say, start
from bench.report import md_table
from bench.throughput import throughput
from harness.pipeline import Pipeline, running_pipeline
from harness.processes import ServiceProcess
from services.common.settings import Settings
from services.model_api.train import train


def predictions_from_queue(model_api: ServiceProcess) -> float:
    """One replica's count of predictions made for features messages (its /metrics)."""
    text = httpx.get(f"{model_api.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "predictions_total" and sample.labels.get("path") == "queue":
                return sample.value
    return 0.0


def predictions_by_replica(pipeline: Pipeline) -> dict[str, float]:
    """Predictions made by each model_api process of the pipeline, by its key in ``services``."""
    return {key: predictions_from_queue(service) for key, service in pipeline.services.items() if service.name == "model_api"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3, help="model_api processes (3)")
    parser.add_argument("--samples", type=int, default=20_000, help="samples in the burst (20000)")
    args = parser.parse_args(argv)
    amqp_url = str(Settings().AMQP_URL)
    if not start("bench.replicas", amqp_url):
        return 1

    problems: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    model_path = work / "myfile.pkl"
    train(model_path)
    say(f"starting features_api, metric_api, plot_api and {args.replicas} model_api processes")
    with running_pipeline(
        work, model_path, amqp_url, model_replicas=args.replicas, FEATURES_INTERVAL_S="3600", PLOT_INTERVAL_S="10"
    ) as pipeline:
        consumers = pipeline.queues()["features"][1]
        result = throughput(pipeline, None, args.samples, problems)  # no memory figures here
        split = predictions_by_replica(pipeline)
        ports = {key: pipeline.services[key].port for key in split}
        say("stopping the services")

    total = sum(split.values())
    print(f"\n### {args.replicas} model_api process{'es' if args.replicas != 1 else ''}, one burst of {args.samples:,} samples\n")
    print(f"Consumers on the features queue: {consumers}.\n")
    print(
        md_table(
            ["samples", "end-to-end s", "end-to-end samples/s", "publish-only samples/s", "lost", "duplicated", "unexpected"],
            [
                [
                    result["samples"],
                    result["end_to_end_s"],
                    result["samples_per_s"],
                    result["publish_samples_per_s"],
                    result["lost"],
                    result["duplicated"],
                    result["unexpected"],
                ]
            ],
        )
    )
    print()
    print(
        md_table(
            ["replica", "port", "predictions", "share %"],
            [
                [key, str(ports[key]), int(count), round(100 * count / total, 1) if total else None]
                for key, count in split.items()
            ],
        )
    )
    problems += [f"{key} made no prediction" for key, count in split.items() if count == 0]
    return finish("bench.replicas", problems, work)


if __name__ == "__main__":
    sys.exit(main())
