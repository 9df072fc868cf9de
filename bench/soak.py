"""Soak: months of traffic squeezed into minutes, against the real services (``harness.running_pipeline``).

Predictions made elsewhere go through ``POST /predictions`` in requests of up to 10,000 items (with
their features) at ``--rate`` per second; 20 % get their label ``--label-delay`` seconds later
(``POST /labels``), the rest never. ``HALF_RETENTION_S`` and ``WRITTEN_HORIZON_S`` are set short
(``--retention``, ``--horizon``) so that the state reaches its bound within the run, and
``ALL_EXACT_ROWS`` (``--exact-rows``, default 100,000) so that metric_api's percentiles are sketched
within it (past it they are compared with pandas' within the sketch's 0.5 %). Every
``--every`` seconds it records: predictions sent, rows written, halves waiting and expired, the
state file's size (with its WAL), each service's RSS and CPU per prediction, and the p99 of the
join (metric_api's ``message_handle_seconds``: a half's arrival to its ack, over that interval).
After the run: each service's start-up time (to a healthy ``/health``) from its snapshot and, with
the snapshots removed, from the full read; and that the statistics metric_api starts with equal a
recomputation from the CSV (pandas), and plot_api's charts are the same as before the restart.

    python -m bench.soak --predictions 3500000 --rate 2500 --every 30 --retention 120 --horizon 240 --label-delay 30
    python -m bench.soak --smoke                                 # seconds: tests/test_soak_smoke.py runs it

Not part of ``make test`` nor ``make bench``: figures in docs/performance.md ("Soak").
"""

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_diabetes

from bench.figures import rounded
from bench.machine import broker_pid, cpu_s, rss_mb
from bench.progress import say
from bench.report import md_table
from harness.pipeline import ROW_CHART_ROUTES, Pipeline, running_pipeline
from harness.processes import ServiceProcess
from services.common.files import METRIC_LOG, METRIC_SNAPSHOT, METRIC_STATE, PLOT_SNAPSHOT
from services.common.quantile_sketch import RELATIVE_ACCURACY
from services.features_api.intake import MAX_ITEMS as LABELS_PER_REQUEST
from services.metric_api.merge import with_rotated
from services.model_api.train import train

LABELLED_SHARE = 0.2
TIMEOUT_S = 120.0
SERVICES = ("features_api", "model_api", "metric_api", "plot_api")
PLOT_INTERVAL_S = 2.0


class Traffic:
    """Request bodies of predictions ``soak-<k>`` (diabetes features, a plausible prediction); which
    get a label (every fifth: 20 %), and its value."""

    def __init__(self) -> None:
        data = load_diabetes()
        self.targets = [float(y) for y in data.target]
        mean = sum(self.targets) / len(self.targets)
        self.tails = [
            f',"prediction":{round(0.75 * y + 0.25 * mean, 2)!r},"features":{json.dumps(row)}'
            for row, y in zip(data.data.tolist(), self.targets, strict=True)
        ]

    def body(self, first: int, count: int, ts: float) -> bytes:
        n = len(self.tails)
        items = ",".join(f'{{"id":"soak-{k}","ts":{ts!r}{self.tails[k % n]}}}' for k in range(first, first + count))
        return f'{{"predictions":[{items}]}}'.encode()

    @staticmethod
    def labelled(k: int) -> bool:
        return k % 5 == 0

    def label(self, k: int) -> dict[str, Any]:
        return {"id": f"soak-{k}", "y_true": self.targets[k % len(self.targets)]}


def state_bytes(logs: Path) -> int:
    return sum(p.stat().st_size for p in logs.glob(METRIC_STATE + "*") if p.is_file())


def handle_buckets(metric_url: str) -> dict[float, float]:
    """metric_api's message_handle_seconds cumulative bucket counts (both queues summed), by upper bound."""
    text = httpx.get(f"{metric_url}/metrics", timeout=10).text
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "message_handle_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def p99_between(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The p99 (its bucket's upper bound) of the observations between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    target = 0.99 * counts[-1]
    return next((b for b, c in zip(bounds, counts, strict=True) if c >= target), math.inf)


class Soak:
    def __init__(self, pipeline: Pipeline, args: argparse.Namespace) -> None:
        self.pipeline, self.args = pipeline, args
        self.traffic = Traffic()
        self.sent = 0
        self.labels_sent = 0
        self.refused = 0
        self.due: deque[tuple[float, list[int]]] = deque()  # (when, ids) of labels to send
        self.samples: list[dict[str, Any]] = []
        self.pids = {name: process.pid for name in SERVICES if (process := pipeline.services[name].process) is not None}
        if (broker := broker_pid()) is not None:
            self.pids["rabbitmq"] = broker

    async def _predict(self, client: httpx.AsyncClient) -> None:
        url = f"{self.pipeline.url('model_api')}/predictions"
        batch, rate, total = self.args.batch, self.args.rate, self.args.predictions
        started = time.monotonic()
        while self.sent < total:
            count = min(batch, total - self.sent)
            if rate:
                ahead = started + (self.sent + count) / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            now = time.time()
            answer = await client.post(url, content=self.traffic.body(self.sent, count, now), headers=self._headers())
            if answer.status_code != 200:
                self.refused += 1
                say(f"soak: POST /predictions answered {answer.status_code}: {answer.text[:200]}")
                await asyncio.sleep(1)
                continue
            self.due.append(
                (
                    time.monotonic() + self.args.label_delay,
                    [k for k in range(self.sent, self.sent + count) if Traffic.labelled(k)],
                )
            )
            self.sent += count

    def _headers(self) -> dict[str, str]:
        return {**self.pipeline.auth, "Content-Type": "application/json"}

    async def _label(self, client: httpx.AsyncClient, predicting: asyncio.Task[None]) -> None:
        url = f"{self.pipeline.url('features_api')}/labels"
        while not (predicting.done() and not self.due):
            if not self.due or self.due[0][0] > time.monotonic():
                await asyncio.sleep(0.2)
                continue
            _, ids = self.due.popleft()
            for start in range(0, len(ids), LABELS_PER_REQUEST):
                labels = [self.traffic.label(k) for k in ids[start : start + LABELS_PER_REQUEST]]
                answer = await client.post(url, json={"labels": labels}, headers=self.pipeline.auth)
                answer.raise_for_status()
                self.labels_sent += len(labels)

    async def _watch(self, done: asyncio.Event) -> None:
        began = time.monotonic()
        cpu = {name: cpu_s(pid) for name, pid in self.pids.items()}
        buckets = await asyncio.to_thread(handle_buckets, self.pipeline.url("metric_api"))
        sent = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=self.args.every)
            sample = await asyncio.to_thread(self._sample, began, cpu, buckets, sent)
            cpu, buckets, sent = sample.pop("_cpu"), sample.pop("_buckets"), sample["predictions"]
            self.samples.append(sample)
            say(
                f"soak: {sample['t_s']:>6.0f}s {sample['predictions']:>9,} predictions, {sample['rows']:>8,} rows, "
                f"{sample['waiting']:>8,} waiting, {sample['expired']:>9,} expired, {sample['queued']:>7,} queued, "
                f"state {sample['state_mb']:.1f} MB, "
                f"RSS metric {sample['rss_mb'].get('metric_api')} MB, join p99 {sample['join_p99_ms']} ms"
            )
            if done.is_set():
                return

    def _sample(
        self, began: float, cpu: dict[str, float | None], buckets: dict[float, float], sent_before: int
    ) -> dict[str, Any]:
        metric = self.pipeline.url("metric_api")
        summary = httpx.get(f"{metric}/metrics/summary", timeout=10).json()
        now_buckets = handle_buckets(metric)
        now_cpu = {name: cpu_s(pid) for name, pid in self.pids.items()}
        predictions = self.sent
        new = predictions - sent_before
        p99 = p99_between(buckets, now_buckets)
        return {
            "t_s": round(time.monotonic() - began, 1),
            "predictions": predictions,
            "labels": self.labels_sent,
            "rows": summary["count"],
            "waiting": sum(n for ages in summary["labels"]["waiting"].values() for n in ages.values()),
            "expired": summary["join"]["expired"],
            "dead_lettered": summary["join"]["dead_lettered"],
            "state_mb": round(state_bytes(self.pipeline.logs_dir) / 1e6, 2),
            # the join's backlog on the broker: halves not yet taken by metric_api
            "queued": sum(self.pipeline.queues()[name][0] for name in ("y_true", "y_pred")),
            "rss_mb": {name: rounded(rss_mb(pid)) for name, pid in self.pids.items()},
            "cpu_ms_per_prediction": {
                name: round((after - before) * 1000 / new, 4)
                for name, before in cpu.items()
                if new and before is not None and (after := now_cpu.get(name)) is not None
            },
            "join_p99_ms": None if p99 is None else (round(p99 * 1000, 1) if math.isfinite(p99) else "inf"),
            "_cpu": now_cpu,
            "_buckets": now_buckets,
        }

    async def run(self) -> None:
        done = asyncio.Event()
        limits = httpx.Limits(max_connections=2)
        async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as predict, httpx.AsyncClient(timeout=TIMEOUT_S) as label:
            watcher = asyncio.create_task(self._watch(done))
            predicting = asyncio.create_task(self._predict(predict))
            labelling = asyncio.create_task(self._label(label, predicting))
            await asyncio.gather(predicting, labelling)
            await self._settle()
            done.set()
            await watcher

    async def _settle(self) -> None:
        """Wait until every label sent has made its row (or the join stops moving)."""
        expected = self.labels_sent
        last, still = -1, time.monotonic()
        while True:
            count = (
                await asyncio.to_thread(
                    lambda: httpx.get(f"{self.pipeline.url('metric_api')}/metrics/summary", timeout=10).json()
                )
            )["count"]
            if count >= expected:
                return
            if count != last:
                last, still = count, time.monotonic()
            elif time.monotonic() - still > 60:
                say(f"soak: {count} rows of {expected} labels sent, not moving for 60 s")
                return
            await asyncio.sleep(1)


def restart_time(pipeline: Pipeline, name: str) -> float:
    """Stop a service (SIGTERM: it writes its snapshot) and start it again: seconds to a healthy /health."""
    old = pipeline.services[name]
    old.stop(signal.SIGTERM, timeout=120)
    started = time.monotonic()
    new = ServiceProcess(old.name, old.env, pipeline.logs_dir, old.cwd).start()
    pipeline.services[name] = new
    new.wait_healthy(timeout=600)
    return round(time.monotonic() - started, 2)


def metric_logs(logs: Path) -> list[Path]:
    """metric_log.csv's rotated files, oldest first, and the current one."""
    return with_rotated([logs / METRIC_LOG])


def recomputed(logs: Path) -> dict[str, float]:
    """The statistics of every row of every file of the metric log, by pandas."""
    rows = pd.concat([pd.read_csv(path, dtype={"id": str}) for path in metric_logs(logs)], ignore_index=True)
    twice = rows["id"][rows["id"].duplicated()]
    if len(twice):
        raise AssertionError(f"ids written twice across the metric log's files: {twice.head(5).tolist()}")
    e = (rows["y_pred"] - rows["y_true"]).to_numpy()
    ae = np.abs(e)
    return {
        "count": len(rows),
        "mae": float(ae.mean()),
        "rmse": float(np.sqrt((e * e).mean())),
        "me": float(e.mean()),
        "max_ae": float(ae.max()),
        "p50_ae": float(np.percentile(ae, 50)),
        "p95_ae": float(np.percentile(ae, 95)),
    }


def differing(summary: dict[str, Any], expected: dict[str, float]) -> list[str]:
    """What differs; percentiles a sketch's (past ALL_EXACT_ROWS, said in ``approximate``) within its accuracy."""
    window = summary["windows"]["all"]
    sketched = "windows.all" in summary.get("approximate", [])

    def tolerance(name: str) -> float:
        return RELATIVE_ACCURACY * (1 + 1e-9) if sketched and name in ("p50_ae", "p95_ae") else 1e-9

    return [
        f"{name}: {window[name]!r} != {value!r}"
        for name, value in expected.items()
        if not math.isclose(window[name], value, rel_tol=tolerance(name), abs_tol=1e-9)
    ]


def charts(pipeline: Pipeline) -> dict[str, str]:
    """The ETags of the charts drawn from the metric log (the drift chart is model_api's, and moves with
    its window; the estimate chart is plot_api's own samples of metric_api's estimate)."""
    answers = pipeline.settled_charts(timeout=600, routes=ROW_CHART_ROUTES).items()
    return {route: answer.headers.get("etag", "") for route, answer in answers}


def after_the_run(pipeline: Pipeline, problems: list[str]) -> dict[str, Any]:
    logs = pipeline.logs_dir
    time.sleep(2.5 * PLOT_INTERVAL_S)  # a refresh after the last row (settled_charts sees 1.2 s of calm only)
    before_charts = charts(pipeline)
    files = metric_logs(logs)
    result: dict[str, Any] = {"csv_mb": round(sum(path.stat().st_size for path in files) / 1e6, 1), "csv_files": len(files)}
    result["start_s_snapshot"] = {name: restart_time(pipeline, name) for name in ("metric_api", "plot_api")}
    expected = recomputed(logs)
    summary = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary", timeout=30).json()
    result["statistics_equal_recomputation"] = not (diff := differing(summary, expected))
    if diff:
        problems.append(f"metric_api's statistics after the restart differ from pandas on the CSV: {diff}")
    result["charts_equal_before_restart"] = charts(pipeline) == before_charts
    if not result["charts_equal_before_restart"]:
        problems.append("plot_api's charts differ after the restart from its snapshot")
    for name in (METRIC_SNAPSHOT, PLOT_SNAPSHOT):
        result[f"{name}_mb"] = round((logs / name).stat().st_size / 1e6, 2) if (logs / name).exists() else None
    # The same restart without snapshots: today's full read, for comparison.
    for service, snapshot in (("metric_api", METRIC_SNAPSHOT), ("plot_api", PLOT_SNAPSHOT)):
        pipeline.services[service].stop(signal.SIGTERM, timeout=120)
        (logs / snapshot).unlink(missing_ok=True)
        pipeline.services[service] = ServiceProcess(service, pipeline.services[service].env, logs, pipeline.services[service].cwd)
    result["start_s_full_read"] = {}
    for service in ("metric_api", "plot_api"):
        started = time.monotonic()
        pipeline.services[service].start().wait_healthy(timeout=900)
        result["start_s_full_read"][service] = round(time.monotonic() - started, 2)
    summary = httpx.get(f"{pipeline.url('metric_api')}/metrics/summary", timeout=30).json()
    if diff := differing(summary, expected):
        problems.append(f"metric_api's statistics after the full read differ from pandas on the CSV: {diff}")
    result["charts_equal_after_full_read"] = charts(pipeline) == before_charts
    return result


def slope(samples: list[dict[str, Any]], key: str, since_t: float, sub: str | None = None) -> float | None:
    """Least-squares slope of a figure per million predictions, over the samples after ``since_t``."""
    points = [(s["predictions"], s[key][sub] if sub else s[key]) for s in samples if s["t_s"] >= since_t]
    points = [(x, y) for x, y in points if isinstance(y, int | float)]
    if len(points) < 3 or points[-1][0] == points[0][0]:
        return None
    x, y = np.array(points, dtype=float).T
    return round(float(np.polyfit(x / 1e6, y, 1)[0]), 3)


def report(figures: dict[str, Any]) -> str:
    rows = [
        [s["t_s"], *(f"{s[key]:,}" for key in ("predictions", "rows", "waiting", "expired", "queued")), s["state_mb"],
         *(s["rss_mb"].get(name) for name in ("metric_api", "plot_api", "model_api", "features_api")),
         s["join_p99_ms"], round(sum(v for k, v in s["cpu_ms_per_prediction"].items() if k != "rabbitmq"), 3)]
        for s in figures["samples"]
    ]  # fmt: skip
    table = md_table(
        ["t s", "predictions", "rows", "waiting", "expired", "queued", "state MB", "RSS metric", "RSS plot", "RSS model",
         "RSS features", "join p99 ms", "services CPU ms / prediction"],
        rows,
    )  # fmt: skip
    return f"{table}\n\n```json\n{json.dumps({k: v for k, v in figures.items() if k != 'samples'}, indent=1)}\n```\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=5_000_000)
    parser.add_argument("--rate", type=float, default=3000.0, help="predictions/s offered (0: as fast as answered)")
    parser.add_argument("--batch", type=int, default=10_000, help="items per POST /predictions (at most 10,000)")
    parser.add_argument("--label-delay", type=float, default=10.0, help="s between a prediction and its label")
    parser.add_argument("--retention", type=float, default=60.0, help="HALF_RETENTION_S of the run")
    parser.add_argument("--horizon", type=float, default=120.0, help="WRITTEN_HORIZON_S of the run")
    parser.add_argument(
        "--exact-rows",
        type=int,
        default=100_000,
        help="metric_api's ALL_EXACT_ROWS of the run (its percentiles sketched past it)",
    )
    parser.add_argument(
        "--log-max-bytes", type=int, default=0, help="METRIC_LOG_MAX_BYTES of the run (0: metric_log.csv is not rotated)"
    )
    parser.add_argument("--every", type=float, default=30.0, help="s between samples of the figures")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@localhost:5672/")
    parser.add_argument("--work", type=Path, default=None, help="folder for the run's logs (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--smoke", action="store_true", help="a run of seconds: 30,000 predictions")
    args = parser.parse_args(argv)
    if args.smoke:
        args.predictions, args.rate, args.batch, args.label_delay, args.retention, args.horizon, args.every = (
            30_000, 3000.0, 5000, 2.0, 4.0, 8.0, 3.0,
        )  # fmt: skip
        args.exact_rows = 2000  # the sketched percentiles checked too
        args.log_max_bytes = 100_000  # and the statistics across a rotated metric log
    work = args.work or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    settings = {
        "HALF_RETENTION_S": str(args.retention),
        "WRITTEN_HORIZON_S": str(args.horizon),
        "ORPHAN_TTL_S": str(args.retention / 2),
        "PLOT_INTERVAL_S": str(PLOT_INTERVAL_S),
        "ALL_EXACT_ROWS": str(args.exact_rows),
        "METRIC_LOG_MAX_BYTES": str(args.log_max_bytes),
    }
    say(f"soak: {args.predictions:,} predictions at {args.rate:g}/s, {LABELLED_SHARE:.0%} labelled after {args.label_delay:g}s, "
        f"HALF_RETENTION_S={args.retention:g}, WRITTEN_HORIZON_S={args.horizon:g}, ALL_EXACT_ROWS={args.exact_rows}, "
        f"METRIC_LOG_MAX_BYTES={args.log_max_bytes}; "
        f"logs in {work}")  # fmt: skip
    model_path = work / "model" / "myfile.pkl"
    model_path.parent.mkdir(exist_ok=True)
    train(model_path)
    with running_pipeline(work, model_path, args.amqp_url, model_replicas=1, **settings) as pipeline:
        soak = Soak(pipeline, args)
        began = time.monotonic()
        asyncio.run(soak.run())
        wall = time.monotonic() - began
        figures: dict[str, Any] = {
            "predictions": soak.sent,
            "labels": soak.labels_sent,
            "refused_requests": soak.refused,
            "wall_s": round(wall, 1),
            "predictions_per_s": round(soak.sent / wall, 1),
            "settings": settings,
            "rate_offered": args.rate,
        }
        reached = args.retention + args.horizon + args.label_delay  # the bounds are in force from then on
        figures["slope_per_million_after_bound"] = {
            "state_mb": slope(soak.samples, "state_mb", reached),
            "rss_metric_api_mb": slope(soak.samples, "rss_mb", reached, "metric_api"),
            "rss_plot_api_mb": slope(soak.samples, "rss_mb", reached, "plot_api"),
        }
        say("soak: the load is done; restarting metric_api and plot_api")
        figures["after"] = after_the_run(pipeline, problems)
        figures["samples"] = soak.samples
    figures["problems"] = problems
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))
    print(report(figures))
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
