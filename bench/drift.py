"""The drift micro-benchmark: ``python -m bench.drift`` (no broker, no services; a minute or two).

In process, with services/model_api/drift/ alone, on two schemas:

- the demo: train's model and reference (every diabetes row), rows drawn as the demo draws them;
- wide: 200 features made here — 150 numeric (normal, log-normal, Poisson counts; some 10 %
  missing) and 50 categorical (2 to 40 categories, Zipf-like shares; some 5 % missing) — with a
  reference of 10,000 rows and a prediction that sums 20 numeric columns.

For each:

- false alarms: calm windows (drawn like the reference), the share that flags any column, which
  columns and by which test; and the share Evidently's thresholds for a reference of more than
  1,000 rows would flag (any numeric column's Wasserstein / std ≥ 0.1, categorical JS ≥ 0.1),
  and this rule's at alpha 0.05 instead of 0.01;
- a calm stream: windows drawn one after another, as the service sees them, assessed every
  ``--step`` samples: how often the alert is raised (a window slides a few samples at a time, so
  the stream's rate is not the calm windows' rate times the number of windows: it looks again
  and again at what is mostly the same window, and an excursion anywhere along the way counts);
- detection delay: a full calm window, then changed rows ``--step`` at a time: how many until the
  changed column (and for the demo the prediction) is flagged; the demo's change is bmi shifted
  by one std, wide's a numeric column shifted by half a std, 30 % of a categorical column's rows
  moved to one category, and a numeric column's missing share from 10 % to 30 %; and in how many
  runs another column (the prediction aside) was flagged on the way;
- cost: ``DriftMonitor.observe`` per sample (batches of 1, 50, 500; for the demo beside the
  model's own predict), one assessment (``GET /drift``, the gauges) at several window sizes, wall
  and CPU time (the CPU time is what a loaded machine does not inflate);
- memory: the window's arrays, and the reference's.

Prints Markdown; ``--json PATH`` writes the figures too. docs/monitoring.md quotes a run.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_diabetes

from services.common.reference import ReferenceTable, read_reference
from services.common.schema import UNSEEN, FeatureSchema, FeatureSpec
from services.model_api.drift import ALPHA, PREDICTION, DriftAlert, DriftMonitor, DriftRule, Reference
from services.model_api.train import DEFAULT_SEED, MODELS, diabetes_split, train

WINDOW = 300  # DRIFT_WINDOW_SIZE's default
EVIDENTLY_THRESHOLD = 0.1  # Evidently's Wasserstein / std and JS thresholds for a reference of more than 1,000 rows


@dataclass(frozen=True)
class Case:
    """A schema, its reference, and how to draw encoded window rows like it (or changed) and predict them."""

    name: str
    reference: Reference
    draw: Callable[[np.random.Generator, int, str | None], np.ndarray]  # rows × features, encoded; a change or None
    predict: Callable[[np.ndarray], np.ndarray]
    changes: dict[str, str]  # change -> the column it should flag

    @property
    def schema(self) -> FeatureSchema:
        return self.reference.schema


# -- the demo


def demo_case(folder: Path) -> tuple[Case, Callable[[np.ndarray], np.ndarray]]:
    """train's model and reference, read back as model_api reads them; the model fitted again as
    train fits it (its predictions on the reference rows are the reference's: checked)."""
    path = folder / "myfile.pkl"
    metadata = train(path)
    schema = FeatureSchema.from_json(metadata["schema"])
    loaded = read_reference(path, metadata, schema)
    if isinstance(loaded, str):
        raise SystemExit(f"the demo's reference is unusable: {loaded}")
    split = diabetes_split(DEFAULT_SEED)
    model = MODELS["linear"](DEFAULT_SEED).fit(split.x_train, split.y_train)
    data = load_diabetes().data
    if not np.allclose(model.predict(data), loaded.table.prediction, rtol=1e-9):
        raise SystemExit("the model fitted here predicts otherwise than the reference train wrote")
    bmi = schema.position("bmi")

    def draw(rng: np.random.Generator, count: int, change: str | None) -> np.ndarray:
        rows: np.ndarray = data[rng.integers(len(data), size=count)].copy()
        if change == "bmi +1 std":
            rows[:, bmi] += data[:, bmi].std()
        return rows

    def predict(rows: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(rows), dtype=float)

    return Case("demo", Reference.from_table(loaded.table), draw, predict, {"bmi +1 std": "bmi"}), predict


# -- wide: 200 features made here


@dataclass(frozen=True)
class WideColumn:
    kind: str  # normal, lognormal, poisson, categorical
    categories: int = 0
    missing: float = 0.0


WIDE = tuple(
    WideColumn("categorical", 2 + (j * 7) % 39, 0.05 if j % 8 == 3 else 0.0)
    if j % 4 == 3
    else WideColumn(("normal", "lognormal", "poisson", "normal")[j % 4], missing=0.1 if j % 8 == 0 else 0.0)
    for j in range(200)
)
SHIFTED, MOVED, MISSING = 4, 7, 8  # a normal column, a categorical one (12 categories), a normal one 10 % missing


def wide_values(rng: np.random.Generator, count: int, change: str | None) -> list[np.ndarray]:
    """Each column's values: floats (NaN missing) or category numbers (draw order; -1 missing)."""
    out = []
    for j, column in enumerate(WIDE):
        values: np.ndarray
        missing = 0.3 if (change == "missing 10 % → 30 %" and j == MISSING) else column.missing
        if column.kind == "categorical":
            shares = 1 / np.arange(1, column.categories + 1) ** 1.1
            values = rng.choice(column.categories, size=count, p=shares / shares.sum())
            if change == "30 % moved to one category" and j == MOVED:
                values[rng.random(count) < 0.3] = column.categories // 2
            values[rng.random(count) < missing] = -1
        else:
            if column.kind == "poisson":
                values = rng.poisson(3, size=count).astype(float)
            else:
                values = rng.normal(size=count) if column.kind == "normal" else rng.lognormal(size=count)
            if change == "+0.5 std" and j == SHIFTED:
                values += 0.5
            values[rng.random(count) < missing] = np.nan
        out.append(values)
    return out


def wide_predict(rows: np.ndarray) -> np.ndarray:
    numeric = [j for j, column in enumerate(WIDE) if column.kind != "categorical"][:20]
    return np.asarray(np.nansum(rows[:, numeric], axis=1), dtype=float)


def wide_case(rng: np.random.Generator, rows: int = 10_000) -> Case:
    values = wide_values(rng, rows, None)
    labels = {j: np.array([f"c{i}" for i in range(c.categories)], dtype=object) for j, c in enumerate(WIDE) if c.categories}
    specs: list[FeatureSpec] = []
    columns: list[np.ndarray] = []
    for j, (column, drawn) in enumerate(zip(WIDE, values, strict=True)):
        if column.kind == "categorical":
            strings = labels[j][np.maximum(drawn, 0)]
            strings[drawn < 0] = None
            counts = Counter(str(s) for s in strings.tolist() if s is not None)
            specs.append(FeatureSpec(f"f{j:03d}", "categorical", tuple(c for c, _ in counts.most_common())))
            columns.append(strings)
        else:
            specs.append(FeatureSpec(f"f{j:03d}", "numeric"))
            columns.append(drawn)
    schema = FeatureSchema(tuple(specs))
    # A category's code in the window is its position among the schema's categories (FeatureSchema.encode).
    codes = {
        j: np.array([schema.features[j].categories.index(f"c{i}") if f"c{i}" in schema.features[j].categories else UNSEEN
                     for i in range(c.categories)], dtype=float)
        for j, c in enumerate(WIDE) if c.categories
    }  # fmt: skip

    def draw(rng: np.random.Generator, count: int, change: str | None) -> np.ndarray:
        matrix = np.empty((count, len(WIDE)))
        for j, drawn in enumerate(wide_values(rng, count, change)):
            matrix[:, j] = np.where(drawn < 0, np.nan, codes[j][np.maximum(drawn, 0).astype(int)]) if j in codes else drawn
        return matrix

    predictions = wide_predict(np.column_stack(values).astype(float))  # it reads numeric columns only
    source = f"made in bench/drift.py ({rows:,} rows)"
    table = ReferenceTable(schema, tuple(columns), np.zeros(rows), predictions, source)
    changes = {
        "+0.5 std": f"f{SHIFTED:03d}",
        "30 % moved to one category": f"f{MOVED:03d}",
        "missing 10 % → 30 %": f"f{MISSING:03d}",
    }
    return Case("wide", Reference.from_table(table), draw, wide_predict, changes)


# -- the measures


def monitor_with(case: Case, rows: np.ndarray, size: int, now: float = 0.0) -> DriftMonitor:
    monitor = DriftMonitor(case.reference, case.schema, size, 3600.0)
    monitor.observe(rows, case.predict(rows), now)
    return monitor


def smallest_p(column: dict[str, Any]) -> float:
    """The smallest p-value of the column's tests (what decides at any alpha)."""
    values = [column.get(name) for name in ("ks_p", "chi2_p", "missing_p", "unseen_p")]
    return float(min(v for v in values if v is not None))


def false_alarms(case: Case, windows: int, size: int, rng: np.random.Generator) -> dict[str, Any]:
    rule = case.reference.rule
    alarms, at_05, evidently = 0, 0, 0
    by_column: Counter[str] = Counter()
    for _ in range(windows):
        report = monitor_with(case, case.draw(rng, size, None), size).assess(0.0)
        columns = {**report["features"], PREDICTION: report["prediction"]}
        alarms += bool(report["drifted"])
        by_column.update(f"{name} ({columns[name]['decided_by']})" for name in report["drifted"])
        at_05 += min(smallest_p(column) for column in columns.values()) <= 0.05 / rule.tests
        evidently += any(
            (column.get("wasserstein_norm") or 0) >= EVIDENTLY_THRESHOLD
            if column["kind"] == "numeric"
            else (column.get("js") or 0) >= EVIDENTLY_THRESHOLD
            for column in columns.values()
        )
    return {
        "windows": windows,
        "size": size,
        "alpha": ALPHA,
        "threshold": rule.threshold,
        "rate": alarms / windows,
        "by_column": dict(by_column.most_common()),
        "rate_at_alpha_0.05": at_05 / windows,
        "rate_evidently_thresholds": evidently / windows,
    }


def calm_stream(case: Case, turnovers: int, size: int, step: int, rng: np.random.Generator) -> dict[str, Any]:
    monitor = monitor_with(case, case.draw(rng, size, None), size)
    alert = DriftAlert()
    columns: Counter[str] = Counter()  # the columns named when it was raised
    raised = episodes = drifted = assessments = 0
    cleared_at = -float("inf")
    for sent in range(step, turnovers * size + 1, step):
        rows = case.draw(rng, step, None)
        monitor.observe(rows, case.predict(rows), float(sent))
        report = monitor.assess(float(sent))
        assessments += 1
        drifted += bool(report["drifted"])
        change = alert.check(report, float(sent))
        if change is not None and change.state == "raised":
            raised += 1
            episodes += sent - cleared_at > size  # not raised again within a window's worth of its clearing
            columns.update(change.drifted)
        elif change is not None:
            cleared_at = sent
    return {
        "samples": turnovers * size,
        "turnovers": turnovers,
        "step": step,
        "raised": raised,
        "episodes": episodes,
        "columns": dict(columns.most_common()),
        "raised_per_turnover": raised / turnovers,
        "drifted_share_of_assessments": drifted / assessments,
    }


def detection(case: Case, change: str, runs: int, size: int, step: int, rng: np.random.Generator) -> dict[str, Any]:
    target = case.changes[change]
    watched = [target, PREDICTION] if case.name == "demo" else [target]
    delays: dict[str, list[float]] = {name: [] for name in watched}
    others = assessments = 0  # runs in which another column was flagged on the way; assessments in all
    for _ in range(runs):
        monitor = monitor_with(case, case.draw(rng, size, None), size)
        found: dict[str, int] = {}
        sent, other = 0, False
        while sent < 2 * size and not set(watched) <= set(found):
            rows = case.draw(rng, step, change)
            sent += step
            monitor.observe(rows, case.predict(rows), float(sent))
            report = monitor.assess(float(sent))
            assessments += 1
            other = other or any(name not in (target, PREDICTION) for name in report["drifted"])
            for name in report["drifted"]:
                found.setdefault(name, sent)
        others += other
        for name in watched:
            delays[name].append(found.get(name, float("inf")))

    def summary(values: list[float]) -> dict[str, Any]:
        ordered = sorted(values)
        return {
            "median": statistics.median(ordered),
            "p90": ordered[int(0.9 * (len(ordered) - 1))],
            "max": ordered[-1],
            "within_window": sum(v <= size for v in ordered) / len(ordered),
        }

    return {
        "change": change,
        "runs": runs,
        "size": size,
        "step": step,
        "assessments": assessments,
        "others_flagged": others,
        "columns": {name: summary(values) for name, values in delays.items()},
    }


def timed(action: Callable[[], object], repeats: int) -> tuple[float, float]:
    """The median wall and CPU seconds of ``action``."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        action()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return statistics.median(wall), statistics.median(cpu)


def cost(
    case: Case, rng: np.random.Generator, repeats: int, sizes: tuple[int, ...], model: Callable[[np.ndarray], np.ndarray] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"observe": {}, "assess": {}}
    monitor = DriftMonitor(case.reference, case.schema, max(sizes), 3600.0)
    for batch in (1, 50, 500):
        rows = case.draw(rng, batch, None)  # the float matrix both paths build once, for the model and the window
        predictions = case.predict(rows)

        def observe(rows: np.ndarray = rows, predictions: np.ndarray = predictions) -> None:
            monitor.observe(rows, predictions, 0.0)

        entry = {"observe_us_per_sample": timed(observe, repeats)[0] / batch * 1e6}
        if model is not None:

            def predict(rows: np.ndarray = rows, model: Callable[[np.ndarray], np.ndarray] = model) -> None:
                model(rows)

            entry["predict_us_per_sample"] = timed(predict, max(1, repeats // 10))[0] / batch * 1e6
        out["observe"][batch] = entry
    for size in sizes:
        monitor = monitor_with(case, case.draw(rng, size, None), size)

        def assess(monitor: DriftMonitor = monitor) -> None:
            monitor.window.version += 1  # as if a sample came: computed again
            monitor.assess(0.0)

        wall, cpu = timed(assess, 20)
        out["assess"][size] = {"wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3, "window_bytes": monitor.window.nbytes}
    numeric = case.reference.numeric
    out["reference_bytes"] = int(numeric.sorted.values.nbytes + numeric.sorted.sums.nbytes)
    return out


# -- the report


def named(columns: dict[str, int]) -> str:
    return f" {columns}" if columns else ""


def report(figures: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, case in figures.items():
        fa, st = case["false_alarms"], case["calm_stream"]
        lines += [
            f"## {name}: {case['schema']}, a reference of {case['reference_rows']:,} rows",
            "",
            (
                f"False alarms: {fa['rate']:.1%} of {fa['windows']} calm windows of {fa['size']} flagged a column "
                f"(p ≤ {fa['threshold']:.3g}){named(fa['by_column'])}; at alpha 0.05 it would be "
                f"{fa['rate_at_alpha_0.05']:.1%}; Evidently's thresholds for a reference above 1,000 rows "
                f"(W/std, JS ≥ 0.1): {fa['rate_evidently_thresholds']:.1%}."
            ),
            "",
            (
                f"Calm stream: {st['samples']:,} samples ({st['turnovers']} windows' worth), assessed every {st['step']}: "
                f"the alert raised {st['raised']} times ({st['raised_per_turnover']:.2f} a window's worth; "
                f"{st['episodes']} more than a window's worth after the last clearing){named(st['columns'])}; "
                f"{st['drifted_share_of_assessments']:.1%} of the assessments drifted."
            ),
            "",
            "| change | column | median | p90 | max | within one window | runs with another column flagged |",
            "|---|---|---|---|---|---|---|",
        ]
        for det in case["detection"]:
            for column, d in det["columns"].items():
                lines.append(
                    f"| {det['change']} | {column} | {d['median']:g} | {d['p90']:g} | {d['max']:g} | {d['within_window']:.0%} "
                    f"| {det['others_flagged']} of {det['runs']} |"
                )
        c = case["cost"]
        lines += ["", "| batch | observe µs/sample | model predict µs/sample |", "|---|---|---|"]
        lines += [
            f"| {batch} | {v['observe_us_per_sample']:.2f} | {v.get('predict_us_per_sample', float('nan')):.2f} |"
            for batch, v in c["observe"].items()
        ]
        lines += ["", "| window size | one assessment, wall (ms) | CPU (ms) | window memory (bytes) |", "|---|---|---|---|"]
        lines += [
            f"| {size:,} | {v['wall_ms']:.1f} | {v['cpu_ms']:.1f} | {v['window_bytes']:,} |" for size, v in c["assess"].items()
        ]
        lines += ["", f"Reference in memory (numeric values and prefix sums): {c['reference_bytes']:,} bytes.", ""]
    return "\n".join(lines)


def measure(case: Case, args: argparse.Namespace, rng: np.random.Generator, windows: int, turnovers: int, runs: int,
            sizes: tuple[int, ...], model: Callable[[np.ndarray], np.ndarray] | None) -> dict[str, Any]:  # fmt: skip
    return {
        "schema": case.schema.describe(),
        "reference_rows": case.reference.rows,
        "rule": DriftRule.for_schema(case.schema).describe(),
        "false_alarms": false_alarms(case, windows, args.window, rng),
        "calm_stream": calm_stream(case, turnovers, args.window, args.step, rng),
        "detection": [detection(case, change, runs, args.window, args.step, rng) for change in case.changes],
        "cost": cost(case, rng, args.repeats, sizes, model),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=1000, help="calm windows for the demo's false-alarm rate (1000)")
    parser.add_argument("--wide-windows", type=int, default=500, help="calm windows for wide's (500)")
    parser.add_argument("--turnovers", type=int, default=100, help="windows' worth of the demo's calm stream (100)")
    parser.add_argument("--wide-turnovers", type=int, default=30, help="windows' worth of wide's calm stream (30)")
    parser.add_argument("--runs", type=int, default=200, help="runs for the demo's detection delay (200)")
    parser.add_argument("--wide-runs", type=int, default=20, help="runs for each of wide's changes (20)")
    parser.add_argument("--step", type=int, default=5, help="changed samples between assessments (5)")
    parser.add_argument("--window", type=int, default=WINDOW, help=f"window size ({WINDOW}, DRIFT_WINDOW_SIZE's default)")
    parser.add_argument("--repeats", type=int, default=2000, help="observe calls per batch size (2000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        demo, model = demo_case(Path(folder))
        figures = {"demo": measure(demo, args, rng, args.windows, args.turnovers, args.runs, (300, 1000, 10_000), model)}
    wide = wide_case(rng)
    figures["wide"] = measure(wide, args, rng, args.wide_windows, args.wide_turnovers, args.wide_runs, (300, 1000), None)
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
