"""What each fast part buys: ``python -m bench.fastpath [--samples 20000] [--rounds 3]``.

Issue 28: each use of aiormq's internals (``services/common/amqp/fastpath``) must pay for itself.
For each configuration — every part on, each part off on its own (``FASTPATH_OFF=<key>``: that
part takes aiormq's public path), every part off — the four services are started afresh on the
real broker, warmed with a small burst, then sent one burst of ``--samples`` through
``POST /features/publish`` until the CSV has every row (bench/throughput.py); the CPU each process
used meanwhile (the services and the local RabbitMQ, from /proc) per sample is its figure.

The configurations alternate round by round (on, publish off, deliveries off, ..., on, publish
off, ...), so that a drift of the machine's speed hits them alike; each part's cost is the median
over rounds of its total CPU per sample against the all-on run of the same round. A part whose
removal costs ≥ 5 % is worth its use of aiormq's internals ("keep"), else "remove".

Prints a Markdown table and writes the figures as JSON to
``bench/results/fastpath-<UTC timestamp>.json`` (and ``fastpath-latest.json``). Exits 1 when
something is broken (lost, duplicated or unexpected ids; a service that fails or does not stop
cleanly; the setting not reaching a service), 130 when interrupted. Measure on a quiet machine:
one run of the defaults takes 6-10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import figures
from bench.broker import redacted
from bench.figures import rounded
from bench.machine import broker_pid, machine
from bench.progress import finish, interrupted, say, start, write_results
from bench.report import md_table
from bench.throughput import throughput
from harness.pipeline import Pipeline, running_pipeline
from services.common.amqp.fastpath import gate
from services.common.settings import Settings
from services.model_api.train import train

REPO_ROOT = Path(__file__).resolve().parents[1]
WARMUP = 1_000  # samples sent first on each fresh pipeline, not measured
KEEP_AT_PERCENT = 5.0  # the bar: a part that buys less is removed
BROKER = "rabbitmq"  # the broker's name in throughput()'s CPU figures
# Services whose log says which parts are off: the three that talk AMQP (plot_api reads metric_api over HTTP).
AMQP_SERVICES = ("features_api", "model_api", "metric_api")
PIPELINE_ENV = {"FEATURES_INTERVAL_S": "3600", "PLOT_INTERVAL_S": "10"}  # as bench/run.py: only the bursts publish


@dataclass(frozen=True)
class Configuration:
    label: str
    off: str  # FASTPATH_OFF
    part: gate.Part | None = None  # the one part it turns off, if one


BASELINE = Configuration("all on", "")


def configurations(parts: Sequence[gate.Part] = gate.PARTS) -> list[Configuration]:
    """All on, each of ``parts`` off on its own, and all off (when more than one part is measured): the
    order of every round."""
    alone = [Configuration(f"{part.key} off", part.key, part) for part in parts]
    return [BASELINE, *alone, *([Configuration("all off", "all")] if len(parts) > 1 else [])]


def one_run(
    work: Path, model_path: Path, amqp_url: str, configuration: Configuration, samples: int, warmup: int, problems: list[str]
) -> dict[str, Any] | None:
    """Fresh services with ``configuration``'s FASTPATH_OFF, a warm-up burst, the measured burst; its figures."""
    folder = Path(tempfile.mkdtemp(prefix=f"{configuration.off or 'on'}-", dir=work))
    found: list[str] = []
    result: dict[str, Any] | None = None
    try:
        with running_pipeline(
            folder,
            model_path,
            amqp_url,
            FASTPATH_OFF=configuration.off,
            FEATURES_INTERVAL_S=PIPELINE_ENV["FEATURES_INTERVAL_S"],
            PLOT_INTERVAL_S=PIPELINE_ENV["PLOT_INTERVAL_S"],
        ) as pipeline:
            warmed = pipeline.burst(warmup, timeout=120)
            pipeline.wait_all_joined(timeout=120)
            result = throughput(pipeline, None, samples, found, earlier=warmed)
            found += setting_reached(pipeline, configuration)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a service that did not start or stop cleanly, a refused request: noted, the next run goes on
        if interrupted():
            raise KeyboardInterrupt from exc
        found.append(f"{type(exc).__name__}: {str(exc)[:3000]}")
    problems += [f"{configuration.label}: {problem}" for problem in found]
    if result is None or found:
        return None
    shutil.rmtree(folder, ignore_errors=True)
    return result


def setting_reached(pipeline: Pipeline, configuration: Configuration) -> list[str]:
    """Each AMQP service's log says the parts FASTPATH_OFF turned off, and says nothing when none was."""
    said = f"FASTPATH_OFF={configuration.off} turns off "
    wrong = []
    for name in AMQP_SERVICES:
        log = pipeline.services[name].output()
        if bool(configuration.off) != (said in log):
            wrong.append(f"{name}'s log does not say what FASTPATH_OFF={configuration.off!r} should turn off")
    return wrong


def cpu_figures(result: dict[str, Any]) -> dict[str, float]:
    """ms of CPU per sample: the whole pipeline (services and broker) and the services alone."""
    per_process: dict[str, float] = result["cpu_ms_per_sample"]
    services = sum(value for name, value in per_process.items() if name != BROKER)
    return {"total": round(sum(per_process.values()), 4), "services": round(services, 4)}


def median(values: Sequence[float]) -> float | None:
    return rounded(figures.median(values), 4)


def summarise(rounds: list[dict[str, dict[str, Any] | None]], order: Sequence[Configuration]) -> list[dict[str, Any]]:
    """Per configuration: the medians over rounds, and what turning it off costs against all on, round by round."""
    rows = []
    for configuration in order:
        runs = [(one.get(configuration.label), one.get(BASELINE.label)) for one in rounds]
        measured = [run for run, _ in runs if run is not None]
        costs: dict[str, list[float]] = {"total": [], "services": []}
        if configuration is not BASELINE:
            for run, baseline in runs:
                if run is None or baseline is None:
                    continue
                ours, theirs = cpu_figures(run), cpu_figures(baseline)
                for kind in costs:
                    if theirs[kind] > 0:
                        costs[kind].append(round(100 * (ours[kind] / theirs[kind] - 1), 2))
        cost = median(costs["total"])
        verdict = None
        if configuration.part is not None and cost is not None:
            verdict = f"keep (≥ {KEEP_AT_PERCENT:g} %)" if cost >= KEEP_AT_PERCENT else f"remove (< {KEEP_AT_PERCENT:g} %)"
        rows.append(
            {
                "configuration": configuration.label,
                "fastpath_off": configuration.off,
                "part": configuration.part.name if configuration.part else None,
                "rounds": len(measured),
                "cpu_ms_per_sample_total": median([cpu_figures(run)["total"] for run in measured]),
                "cpu_ms_per_sample_services": median([cpu_figures(run)["services"] for run in measured]),
                "samples_per_s": median([run["samples_per_s"] for run in measured if run.get("samples_per_s")]),
                "off_costs_percent_total": cost,
                "off_costs_percent_services": median(costs["services"]),
                "off_costs_percent_total_by_round": costs["total"],
                "verdict": verdict,
            }
        )
    return rows


def report(results: dict[str, Any]) -> str:
    s = results["settings"]
    counted = " and the broker" if results.get("broker_counted", True) else " (the broker is not on this machine: not counted)"
    lines = [
        (
            f"**What each fast part buys** — {s['rounds']} round(s) of {len(results['configurations'])} "
            f"configurations, alternating; each a fresh pipeline, a warm-up of {s['warmup']:,} samples, then "
            f"a burst of {s['samples']:,}. CPU ms of one core per sample (user + system, /proc), medians over "
            f"rounds; total = the four services{counted}. Turning off costs: the median over rounds of the run's "
            "CPU per sample against the all-on run of the same round; a part is worth its use of aiormq's "
            f"internals at ≥ {KEEP_AT_PERCENT:g} % (total)."
        ),
        "",
        md_table(
            [
                "configuration",
                "FASTPATH_OFF",
                "CPU ms / sample (total)",
                "CPU ms / sample (services)",
                "samples/s",
                "turning off costs % (total)",
                "… (services)",
                "% per round (total)",
                "verdict",
            ],
            [
                [
                    row["configuration"],
                    f"`{row['fastpath_off']}`" if row["fastpath_off"] else "–",
                    row["cpu_ms_per_sample_total"],
                    row["cpu_ms_per_sample_services"],
                    row["samples_per_s"],
                    row["off_costs_percent_total"],
                    row["off_costs_percent_services"],
                    ", ".join(f"{cost:+.1f}" for cost in row["off_costs_percent_total_by_round"]) or None,
                    row["verdict"],
                ]
                for row in results["configurations"]
            ],
        ),
    ]
    return "\n".join(lines)


def measure(
    work: Path,
    model_path: Path,
    amqp_url: str,
    samples: int,
    rounds: int,
    warmup: int,
    problems: list[str],
    parts: Sequence[gate.Part] = gate.PARTS,
) -> dict[str, Any]:
    """Every configuration (``parts`` off each on its own), ``rounds`` times, alternating; the figures
    of each run and their summary."""
    order = configurations(parts)
    runs: list[dict[str, dict[str, Any] | None]] = []
    for number in range(1, rounds + 1):
        one: dict[str, dict[str, Any] | None] = {}
        for configuration in order:
            say(f"fastpath: round {number}/{rounds}, {configuration.label} (FASTPATH_OFF={configuration.off!r})")
            one[configuration.label] = one_run(work, model_path, amqp_url, configuration, samples, warmup, problems)
            if (run := one[configuration.label]) is not None:
                total = cpu_figures(run)["total"]
                say(f"fastpath: {configuration.label}: {total:.3f} ms CPU/sample, {run['samples_per_s']} samples/s")
        runs.append(one)
    return {
        "settings": {"samples": samples, "rounds": rounds, "warmup": warmup, "parts": [part.key for part in parts]},
        "configurations": summarise(runs, order),
        "runs": runs,
        "broker_counted": broker_pid() is not None,
    }


KEYS = tuple(part.key for part in gate.PARTS)


def parts_named(text: str) -> list[gate.Part]:
    keys = [key.strip() for key in text.split(",") if key.strip()]
    unknown = [key for key in keys if key not in KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or 'none'}: the parts are {','.join(KEYS)}")
    return [part for part in gate.PARTS if part.key in keys]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fastpath", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000, help="samples in each measured burst (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every configuration, alternating (3)")
    parser.add_argument(
        "--warmup", type=int, default=WARMUP, help=f"samples sent first on each fresh pipeline, not measured ({WARMUP})"
    )
    parser.add_argument(
        "--parts",
        type=parts_named,
        default=list(gate.PARTS),
        help=f"the parts to turn off each on its own, comma-separated, of {','.join(KEYS)} (all of them)",
    )
    parser.add_argument("--amqp-url", default=None, help="the broker (AMQP_URL, else amqp://guest:guest@localhost:5672/)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="folder for the JSON (bench/results)")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--samples and --rounds must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    amqp_url = args.amqp_url or str(Settings().AMQP_URL)
    if not start("bench.fastpath", amqp_url):
        return 1
    now = datetime.now(UTC)
    problems: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="bench-fastpath-"))
    began = time.monotonic()
    try:
        model_path = work / "model" / "myfile.pkl"
        model_path.parent.mkdir()
        train(model_path)
        figures = measure(work, model_path, amqp_url, args.samples, args.rounds, args.warmup, problems, args.parts)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"\nbench.fastpath: interrupted; services stopped, queues deleted (their logs: {work})", file=sys.stderr)
        return 130
    results = {
        "started_at": now.isoformat(timespec="seconds"),
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
        "amqp_url": redacted(amqp_url),
        "machine": machine(amqp_url),
        **figures,
        "problems": problems,
        "duration_s": round(time.monotonic() - began, 1),
    }
    print()
    print(report(results))
    write_results(args.out, results, now.strftime("%Y%m%dT%H%M%SZ"), "fastpath-")
    return finish("bench.fastpath", problems, work)


if __name__ == "__main__":
    sys.exit(main())
