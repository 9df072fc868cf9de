"""The benchmark (issue 4): ``python -m bench.run`` (``make bench``).

Starts the four real services (real processes, the real RabbitMQ, a fresh QUEUE_PREFIX and a
temporary LOGS_DIR), drives them, prints Markdown tables and writes the same figures as JSON
to ``bench/results/<UTC timestamp>.json`` and ``bench/results/latest.json``.

Sections: machine; throughput of a burst (with lost/duplicated ids and each service's RSS);
ingest of predictions made elsewhere (``POST /predictions``); end-to-end latency at fixed offered
rates, with the broker's version beside each (``--broker-4x``: again on a RabbitMQ 4.x in a
container); HTTP load (an async httpx load loop of our own); the throughput burst again on a
pipeline serving a 100-feature model (wide); plot_api alone on CSVs of growing size.

It is not a test: a slow machine only gives slow figures. It exits 1 only when something is
broken (lost, duplicated or unexpected ids, a service that fails or does not stop cleanly, a
section that cannot finish), and 130 when interrupted. Services are stopped (SIGTERM) and
their queues deleted in every case.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.broker import COMPOSE_BROKER_IMAGE, rabbitmq_container, redacted
from bench.cluster import add_arguments as add_cluster_arguments
from bench.cluster import cluster_report, cluster_section
from bench.fastpath import WARMUP as FASTPATH_WARMUP
from bench.fastpath import measure as measure_fastpath
from bench.fastpath import report as fastpath_report
from bench.http_load import http_load
from bench.ingest import ingest
from bench.latency import latency
from bench.machine import RssSampler, broker_pid, machine, service_pids
from bench.progress import finish, interrupted, say, start, write_results
from bench.report import report
from bench.scale import scale_one
from bench.throughput import throughput
from bench.wide import register_wide_model, wide
from harness.checker import check
from harness.pipeline import Pipeline, running_pipeline
from services.common.settings import Settings
from services.model_api.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("throughput", "ingest", "latency", "http", "wide", "scale")
# Sections run only when --only names them: fastpath starts the pipeline a dozen times (bench/fastpath.py).
OPT_IN_SECTIONS = ("fastpath",)
# Sections that compare with the throughput burst or need its rows (the HTTP section asks for the histogram it draws).
NEEDS_THROUGHPUT = ("ingest", "wide", "http")
PIPELINE_ENV = {"FEATURES_INTERVAL_S": "3600", "PLOT_INTERVAL_S": "10"}


def sections(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in (*SECTIONS, *OPT_IN_SECTIONS)]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'none'}: the sections are {','.join(SECTIONS)} (and, only when named, "
            f"{','.join(OPT_IN_SECTIONS)})"
        )
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def numbers(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
        return lambda text: [kind(part) for part in text.split(",") if part.strip()]

    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000, help="samples in the throughput burst (50000)")
    parser.add_argument(
        "--rates",
        type=numbers(float),
        default=[10.0, 200.0, 1000.0],
        help="offered rates of the latency section, samples/s (10,200,1000: a quiet system, and under load)",
    )
    parser.add_argument("--rate-seconds", type=float, default=30.0, help="seconds per offered rate (30)")
    parser.add_argument("--http-seconds", type=float, default=5.0, help="seconds of load per endpoint and round (5)")
    parser.add_argument(
        "--http-rounds",
        type=int,
        default=3,
        help="rounds of the HTTP section, each endpoint once a round, the order rotated (3): ratios to /health within a round",
    )
    parser.add_argument("--http-clients", type=int, default=50, help="concurrent HTTP clients (50)")
    parser.add_argument(
        "--scale-rows",
        type=numbers(int),
        default=[10_000, 100_000, 1_000_000],
        help="CSV sizes for plot_api (10000,100000,1000000)",
    )
    parser.add_argument(
        "--http-client",
        choices=["httpx", "raw"],
        default="raw",
        help="load generator of the HTTP section: httpx.AsyncClient per client (httpx), or a minimal "
        "HTTP/1.1 client on asyncio streams that uses a tenth of the CPU (raw)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="add the cluster section: quorum queues on the local three-node cluster against classic on the single broker",
    )
    parser.add_argument("--ingest-seconds", type=float, default=10.0, help="seconds of POST /predictions load (10)")
    parser.add_argument("--ingest-clients", type=int, default=4, help="concurrent POST /predictions clients (4)")
    parser.add_argument(
        "--wide-samples", type=int, default=20_000, help="samples in the throughput burst of the 100-feature model (20000)"
    )
    parser.add_argument(
        "--only",
        type=sections,
        default=list(SECTIONS),
        help=f"run only these sections, comma-separated, of {','.join(SECTIONS)} (all); ingest and wide also run "
        "throughput, the diabetes figure they are compared with; --cluster adds the cluster section either way; "
        "fastpath (what each part of services/common/amqp/fastpath buys: python -m bench.fastpath) runs only when named",
    )
    parser.add_argument(
        "--services-from",
        type=Path,
        default=REPO_ROOT,
        help="the checkout whose services run (this one's): another's gives a before-figure under the same "
        "benchmark, e.g. a git worktree of an older commit",
    )
    parser.add_argument(
        "--amqp-url",
        default=None,
        help="the broker the services run on (AMQP_URL, else amqp://guest:guest@localhost:5672/)",
    )
    parser.add_argument(
        "--broker-4x",
        action="store_true",
        help="add the latency section again on a RabbitMQ 4.x in a container: the image deploy/compose.yml names, "
        "started on a free port and removed afterwards (needs Docker, or root to start it: bench/broker.py)",
    )
    parser.add_argument(
        "--fastpath-samples", type=int, default=20_000, help="samples in each burst of the fastpath section (20000)"
    )
    parser.add_argument("--fastpath-rounds", type=int, default=3, help="rounds over the fastpath section's configurations (3)")
    add_cluster_arguments(parser)
    parser.add_argument("--smoke", action="store_true", help="tiny everything, to check the benchmark itself works")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="folder for the JSON (bench/results)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.samples, args.rates, args.rate_seconds = 200, [10.0, 50.0], 2.0
        args.http_seconds, args.http_clients, args.http_rounds, args.scale_rows = 1.0, 10, 1, [1000]
        args.cluster_samples = 200
        args.ingest_seconds, args.ingest_clients, args.wide_samples = 2.0, 2, 300
        args.fastpath_samples, args.fastpath_rounds = 200, 1
    if any(name in args.only for name in NEEDS_THROUGHPUT) and "throughput" not in args.only:
        args.only = ["throughput", *args.only]
    return args


def section(name: str, problems: list[str], run: Callable[[], Any]) -> Any:
    """Run one section; a failure is recorded as a problem and the next section still runs."""
    try:
        return run()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if interrupted():
            raise KeyboardInterrupt from exc
        say(f"{name} failed: {exc}")
        traceback.print_exc(file=sys.stderr)
        problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:2000]}")
        return None


def with_pipeline(
    label: str,
    folder: Path,
    model_path: Path,
    amqp_url: str,
    problems: list[str],
    run: Callable[[Pipeline, RssSampler], None],
    services_root: Path = REPO_ROOT,
) -> dict[str, float]:
    """Start the four services serving ``model_path``, ``run`` the sections against them, stop them;
    the peak RSS of each service over the whole run. A service that does not start or stop cleanly is
    a problem, and the run goes on."""
    folder.mkdir()
    peaks: dict[str, float] = {}
    try:
        say(f"starting the four services ({label})")
        with running_pipeline(
            folder,
            model_path,
            amqp_url,
            services_root=services_root,
            FEATURES_INTERVAL_S=PIPELINE_ENV["FEATURES_INTERVAL_S"],
            PLOT_INTERVAL_S=PIPELINE_ENV["PLOT_INTERVAL_S"],
        ) as pipeline:
            rss = RssSampler(pipeline.services)
            rss.start()
            try:
                run(pipeline, rss)
            finally:
                rss.stop()
                peaks = {name: round(value, 1) for name, value in rss.overall.items()}
            say(f"stopping the four services ({label})")
    except AssertionError as exc:  # stop_all: a service did not stop cleanly (or failed to start)
        if interrupted():
            raise KeyboardInterrupt from exc
        problems.append(f"pipeline ({label}): {str(exc)[:3000]}")
    return peaks


def latency_section(
    pipeline: Pipeline, broker: str, args: argparse.Namespace, results: dict[str, Any], problems: list[str]
) -> list[dict[str, Any]]:
    """The latency section on ``pipeline``; its rows added to the results' latency rows (one per rate and
    broker), and every id it published checked in the CSV (``latency_check``, one entry per broker)."""
    all_ids: list[str] = []
    rows = section(
        f"latency ({broker})", problems, lambda: latency(pipeline, args.rates, args.rate_seconds, all_ids, problems, broker)
    )
    if all_ids:
        verdict = check(all_ids, pipeline.csv)
        results.setdefault("latency_check", []).append(
            {"broker": broker, "published": verdict.published, "lost": verdict.lost, "duplicated": verdict.duplicated}
        )
        if verdict.lost or verdict.duplicated:
            problems.append(f"latency ({broker}): lost {verdict.lost}, duplicated {verdict.duplicated} ids")
    return [*(results.get("latency") or []), *(rows or [])]


def latency_on_4x(work: Path, model_path: Path, args: argparse.Namespace, results: dict[str, Any], problems: list[str]) -> None:
    """The latency section again, on fresh services over a RabbitMQ 4.x in a container (``--broker-4x``)."""
    say(f"latency (4.x): starting {COMPOSE_BROKER_IMAGE} in a container")
    with rabbitmq_container() as broker:
        say(f"latency (4.x): {broker.image} answers ({broker.how})")
        where = f"container {broker.image}"

        def run(pipeline: Pipeline, _rss: RssSampler) -> None:
            results["latency"] = latency_section(pipeline, where, args, results, problems)

        with_pipeline(
            "diabetes, RabbitMQ 4.x", work / "pipeline-4x", model_path, broker.amqp_url, problems, run, args.services_from
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    amqp_url = args.amqp_url or str(Settings().AMQP_URL)
    if not start("bench", amqp_url):
        return 1

    now = datetime.now(UTC)
    results: dict[str, Any] = {
        "started_at": now.isoformat(timespec="seconds"),
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            "samples": args.samples,
            "rates": args.rates,
            "rate_seconds": args.rate_seconds,
            "http_seconds": args.http_seconds,
            "http_rounds": args.http_rounds,
            "http_clients": args.http_clients,
            "http_client": args.http_client,
            "scale_rows": args.scale_rows,
            "smoke": args.smoke,
            "ingest_seconds": args.ingest_seconds,
            "ingest_clients": args.ingest_clients,
            "wide_samples": args.wide_samples,
            "fastpath": ({"samples": args.fastpath_samples, "rounds": args.fastpath_rounds} if "fastpath" in args.only else None),
            "only": args.only,
            "amqp_url": redacted(amqp_url),
            "services_from": str(args.services_from),
            "broker_4x": COMPOSE_BROKER_IMAGE if args.broker_4x else None,
            "pipeline_env": PIPELINE_ENV,
            "cluster": (
                {"samples": args.cluster_samples, "shards": args.cluster_shards, "model_replicas": args.cluster_replicas}
                if args.cluster
                else None
            ),
        },
    }
    problems: list[str] = []
    results["problems"] = problems
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    began = time.monotonic()
    try:
        say(f"machine; work folder {work}")
        results["machine"] = machine(amqp_url)
        model_path = work / "model" / "myfile.pkl"
        model_path.parent.mkdir()
        train(model_path)

        def diabetes(pipeline: Pipeline, rss: RssSampler) -> None:
            if "throughput" in args.only:
                results["throughput"] = section("throughput", problems, lambda: throughput(pipeline, rss, args.samples, problems))
            if "ingest" in args.only:
                samples_per_s = (results.get("throughput") or {}).get("samples_per_s")
                results["ingest"] = section(
                    "ingest",
                    problems,
                    lambda: ingest(pipeline, args.ingest_clients, args.ingest_seconds, samples_per_s, problems),
                )
            if "latency" in args.only:
                where = "host" if args.amqp_url is None else f"--amqp-url {redacted(amqp_url)}"
                results["latency"] = latency_section(pipeline, where, args, results, problems)
            if "http" in args.only:
                results["http"] = section(
                    "http",
                    problems,
                    lambda: http_load(
                        pipeline,
                        args.http_clients,
                        args.http_seconds,
                        args.http_client,
                        problems,
                        args.http_rounds,
                        service_pids(pipeline) | ({"rabbitmq": broker_pid()} if args.amqp_url is None else {}),
                    ),
                )

        if any(name in args.only for name in ("throughput", "ingest", "latency", "http")):
            results["peak_rss_mb"] = with_pipeline(
                "diabetes", work / "pipeline", model_path, amqp_url, problems, diabetes, args.services_from
            )

        if args.broker_4x:
            section("latency (4.x)", problems, lambda: latency_on_4x(work, model_path, args, results, problems))

        if "wide" in args.only:
            say("wide: registering the 100-feature model")
            registered = section("wide", problems, lambda: register_wide_model(work / "wide"))
            if registered is not None:
                wide_path, features = registered

                def wide_burst(pipeline: Pipeline, rss: RssSampler) -> None:
                    results["wide"] = section(
                        "wide", problems, lambda: wide(pipeline, rss, args.wide_samples, features, problems)
                    )

                with_pipeline("wide", work / "wide-pipeline", wide_path, amqp_url, problems, wide_burst, args.services_from)

        scale = []
        for rows in args.scale_rows if "scale" in args.only else []:
            say(f"scale: plot_api on {rows} rows")
            one = section(f"scale {rows}", problems, functools.partial(scale_one, work, rows, problems))
            if one is not None:
                scale.append(one)
        if "scale" in args.only:
            results["scale"] = scale

        if "fastpath" in args.only:
            fastpath_dir = work / "fastpath"
            fastpath_dir.mkdir()
            results["fastpath"] = section(
                "fastpath",
                problems,
                lambda: measure_fastpath(
                    fastpath_dir,
                    model_path,
                    amqp_url,
                    args.fastpath_samples,
                    args.fastpath_rounds,
                    min(FASTPATH_WARMUP, args.fastpath_samples),
                    problems,
                ),
            )

        if args.cluster:
            cluster_dir = work / "cluster"
            cluster_dir.mkdir()
            results["cluster"] = section(
                "cluster",
                problems,
                lambda: cluster_section(
                    cluster_dir,
                    model_path,
                    amqp_url,
                    args.cluster_samples,
                    args.cluster_shards,
                    args.cluster_replicas,
                    problems,
                ),
            )
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"\nbench: interrupted; services stopped, queues deleted (their logs: {work})", file=sys.stderr)
        return 130
    results["duration_s"] = round(time.monotonic() - began, 1)

    text = report(results)
    if results.get("fastpath"):
        text += "\n\n" + fastpath_report(results["fastpath"])
    if results.get("cluster"):
        text += "\n\n" + cluster_report(results["cluster"])
    print()
    print(text)
    write_results(args.out, results, now.strftime("%Y%m%dT%H%M%SZ"))
    return finish("bench", problems, work)


if __name__ == "__main__":
    sys.exit(main())
