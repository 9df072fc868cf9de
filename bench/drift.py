"""The drift micro-benchmark: ``python -m bench.drift`` (no broker, no services; about a minute).

In process, on the demo's model (``train``'s default) and the diabetes rows the demo draws:

- false alarms: calm windows (rows drawn as the demo draws them), the share that flags any column;
- detection delay: a full calm window, then rows with bmi shifted by one std, one batch of
  ``--step`` at a time: how many shifted rows until bmi, and the prediction, are flagged;
- cost: model_api's ``DriftWatch.observe`` per sample (the matrix and predictions both paths hand
  it), next to the model's own predict on the same batch; one assessment of the window (``GET /drift``,
  the gauges);
- memory: the window's arrays.

Prints Markdown; ``--json PATH`` writes the figures too. docs/performance.md quotes a run.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_diabetes

from services.common.messages import FEATURE_NAMES
from services.common.settings import Settings
from services.model_api.drift import DriftMonitor
from services.model_api.drift_watch import DriftWatch
from services.model_api.modelstore import load_model
from services.model_api.train import train

DATA = load_diabetes().data
BMI = FEATURE_NAMES.index("bmi")


def draw(rng: np.random.Generator, count: int, shift: float = 0.0) -> np.ndarray:
    rows: np.ndarray = DATA[rng.integers(len(DATA), size=count)].copy()
    rows[:, BMI] += shift * DATA[:, BMI].std()
    return rows


def false_alarms(watch: DriftWatch, predict: Any, windows: int, size: int, rng: np.random.Generator) -> dict[str, Any]:
    reference = watch.monitor.reference
    alarms, by_column = 0, dict.fromkeys([*FEATURE_NAMES, "prediction"], 0)
    for _ in range(windows):
        monitor = DriftMonitor(reference, size, 3600.0)
        rows = draw(rng, size)
        monitor.observe(rows, predict(rows), 0.0)
        drifted = monitor.assess(0.0)["drifted"]
        alarms += bool(drifted)
        for name in drifted:
            by_column[name] += 1
    return {"windows": windows, "size": size, "rate": alarms / windows, "by_column": {k: v for k, v in by_column.items() if v}}


def detection(watch: DriftWatch, predict: Any, runs: int, size: int, step: int, rng: np.random.Generator) -> dict[str, Any]:
    reference = watch.monitor.reference
    delays: dict[str, list[float]] = {"bmi": [], "prediction": []}
    others = 0
    for _ in range(runs):
        monitor = DriftMonitor(reference, size, 3600.0)
        rows = draw(rng, size)
        monitor.observe(rows, predict(rows), 0.0)
        found: dict[str, int] = {}
        sent = 0
        while sent < 2 * size and len(found) < 2:
            rows = draw(rng, step, shift=1.0)
            sent += step
            monitor.observe(rows, predict(rows), float(sent))
            report = monitor.assess(float(sent))
            others += any(name not in delays for name in report["drifted"])
            for name in report["drifted"]:
                found.setdefault(name, sent)
        for name in delays:
            delays[name].append(found.get(name, float("inf")))

    def summary(values: list[float]) -> dict[str, Any]:
        ordered = sorted(values)
        return {
            "median": statistics.median(ordered),
            "p90": ordered[int(0.9 * (len(ordered) - 1))],
            "max": ordered[-1],
            "within_window": sum(v <= size for v in ordered) / len(ordered),
        }

    return {"runs": runs, "size": size, "step": step, "others_flagged": others, **{k: summary(v) for k, v in delays.items()}}


def cost(watch: DriftWatch, model: Any, rng: np.random.Generator, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for batch in (1, 50, 500):
        rows = draw(rng, batch)  # the float matrix both paths build once, for the model and the window
        predictions = model.predictor.predict(rows)
        started = time.perf_counter()
        for _ in range(repeats):
            watch.observe(rows, predictions)
        observe = (time.perf_counter() - started) / repeats / batch
        started = time.perf_counter()
        for _ in range(max(1, repeats // 10)):
            model.predictor.predict(rows)
        predict = (time.perf_counter() - started) / max(1, repeats // 10) / batch
        out[f"batch_{batch}"] = {"observe_us_per_sample": observe * 1e6, "predict_us_per_sample": predict * 1e6}
    assess = {}
    for size in (300, 1000, 10_000):
        monitor = DriftMonitor(watch.monitor.reference, size, 3600.0)
        rows = draw(rng, size)
        monitor.observe(rows, np.asarray(model.predictor.predict(rows)), 0.0)
        times = []
        for _ in range(20):
            monitor.window.version += 1  # as if a sample came: computed again
            started = time.perf_counter()
            monitor.assess(0.0)
            times.append(time.perf_counter() - started)
        assess[size] = {"assess_ms": statistics.median(times) * 1e3, "window_bytes": monitor.window.nbytes}
    out["assess"] = assess
    return out


def report(figures: dict[str, Any]) -> str:
    fa, det, c = figures["false_alarms"], figures["detection"], figures["cost"]
    lines = [
        f"False alarms: {fa['rate']:.1%} of {fa['windows']} calm windows of {fa['size']} flagged any column {fa['by_column']}",
        "",
        (
            f"Detection of a one-std bmi shift ({det['runs']} runs, window {det['size']}, assessed every {det['step']} "
            f"samples; another column flagged in {det['others_flagged']} assessments):"
        ),
        "",
        "| column | median | p90 | max | within one window |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {det[name]['median']:g} | {det[name]['p90']:g} | {det[name]['max']:g} | {det[name]['within_window']:.0%} |"
        for name in ("bmi", "prediction")
    ]
    lines += ["", "| batch | observe µs/sample | model predict µs/sample |", "|---|---|---|"]
    lines += [
        f"| {name.removeprefix('batch_')} | {v['observe_us_per_sample']:.2f} | {v['predict_us_per_sample']:.2f} |"
        for name, v in c.items()
        if name.startswith("batch_")
    ]
    lines += ["", "| window size | one assessment (ms) | window memory (bytes) |", "|---|---|---|"]
    lines += [f"| {size:,} | {v['assess_ms']:.1f} | {v['window_bytes']:,} |" for size, v in c["assess"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=1000, help="calm windows for the false-alarm rate (1000)")
    parser.add_argument("--runs", type=int, default=200, help="shift runs for the detection delay (200)")
    parser.add_argument("--step", type=int, default=5, help="shifted samples between assessments (5)")
    parser.add_argument("--repeats", type=int, default=2000, help="observe calls per batch size (2000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    size = Settings.model_fields["DRIFT_WINDOW_SIZE"].default
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "myfile.pkl"
        train(path)
        model = load_model(path)
        watch = DriftWatch(Settings(MODEL_PATH=path), model)

        def predict(rows: np.ndarray) -> np.ndarray:
            return np.asarray(model.predictor.predict(rows))

        figures = {
            "false_alarms": false_alarms(watch, predict, args.windows, size, rng),
            "detection": detection(watch, predict, args.runs, size, args.step, rng),
            "cost": cost(watch, model, rng, args.repeats),
        }
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
