"""The estimated-error benchmark (issue 24): ``python -m bench.estimate`` (no broker, no services; a few minutes).

In process, on the code the services run: services/model_api/loss_model.py (fitted as ``train``
fits it: the model's training rows, their losses out of fold), services/metric_api/estimate.py
(the tracker and its alert) and services/model_api/drift (input drift), on two cases:

- **synthetic**: a regression made here whose noise grows with ``x0`` —
  ``y = 2·x0 + x1 − x2 + ε·s(x0)``, ``x ~ N(0, I₄)``, ``s(x0) = 0.5 + 2/(1 + e^(−2·x0))`` (0.5 to 2.5) —
  a linear model fitted on 5,000 rows, which are also its reference (as ``train``'s demo);
- **diabetes**: ``train``'s demo model and reference, rows drawn as features_api's demo draws
  them (services/features_api/sampler.py, its ``tilt`` and ``concept`` scenarios).

Figures:

- **covariate shift** (synthetic: ``x0`` shifted by +1 std toward the noisier side; diabetes: a
  tilt of +1 toward the feature whose high values the model errs most on, labels true): in each
  300-prediction window the estimated MAE against the realized MAE of the same predictions —
  the share of windows within ±10 %, the median and worst relative difference; and the estimated
  MAE the tracker shows after the first 300 shifted predictions with no label, against the calm
  estimate and its band;
- **concept shift** (the labels' relation to an input changes, the inputs do not): joined rows one
  at a time after a calm 1,000: how many until the ``estimate/<version>`` alert is raised (median,
  worst, share within 300), and whether input drift (the drift monitor's window of 300) flags any
  column then;
- **calm stream**: joined rows one at a time, the check after every row: raises per 10,000 rows;
  and the same after the covariate shift (its labels true: no concept shift, so the alert should stay calm);
- **cost**: the loss model's estimate per sample in batches of 1, 50 and 500 (wall and CPU), the
  tracker's per row and per prediction.

Prints Markdown; ``--json PATH`` writes the figures too. docs/monitoring.md quotes a run.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LinearRegression

from services.common.estimate import BAND_Z
from services.common.metric_rows import MetricRow
from services.common.reference import ReferenceTable, read_reference
from services.common.schema import FeatureSchema
from services.features_api.sampler import ReferenceSampler, scenario_for
from services.metric_api.estimate import ALERT_Z, CHECK_ROWS, EstimateTracker
from services.model_api.drift import DriftMonitor, Reference
from services.model_api.loss_model import LossModel, fit_loss_model, out_of_fold
from services.model_api.modelstore import load_model
from services.model_api.train import train

WINDOW = 300
ALERT_Z_USED = ALERT_Z
VERSION = "v"


@dataclass
class Case:
    """A model, its loss model and reference, and draws of (features, labels) calm or changed."""

    name: str
    loss: LossModel
    predict: Callable[[np.ndarray], np.ndarray]
    draw: Callable[[np.random.Generator, int, str], tuple[np.ndarray, np.ndarray]]  # change: calm, covariate, concept
    reference: Reference
    covariate: str  # what the covariate shift is
    concept: str  # what the concept shift is


# -- the synthetic regression


def spread(x0: np.ndarray) -> np.ndarray:
    return 0.5 + 2.0 / (1.0 + np.exp(-2.0 * x0))


def concept_size(change: str) -> float:
    """``concept:<size>`` → size; 0 for any other change."""
    return float(change.split(":")[1]) if change.startswith("concept:") else 0.0


def synthetic_rows(rng: np.random.Generator, n: int, change: str = "calm") -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, 4))
    if change == "covariate":
        x[:, 0] += 1.0
    slope = 1.0 - concept_size(change)
    y = 2 * x[:, 0] + slope * x[:, 1] - x[:, 2] + rng.normal(size=n) * spread(x[:, 0])
    return x, y


def synthetic_case(rng: np.random.Generator) -> Case:
    x, y = synthetic_rows(rng, 5000)
    model = LinearRegression().fit(x, y)
    schema = FeatureSchema.numeric(["x0", "x1", "x2", "x3"])
    loss = fit_loss_model(schema, x, y, out_of_fold(model, x, y))
    table = ReferenceTable(schema, tuple(x.T.copy()), y, model.predict(x), "synthetic")
    return Case(
        "synthetic",
        loss,
        lambda rows: np.asarray(model.predict(rows), dtype=float),
        synthetic_rows,
        Reference.from_table(table),
        "x0 + 1 std (toward the noisier side)",
        "y's slope on x1 from 1 to 1 − size",
    )


# -- the diabetes demo


def diabetes_case(folder: Path) -> Case:
    path = folder / "myfile.pkl"
    metadata = train(path)
    loaded = load_model(path)
    if isinstance(loaded.loss, str) or loaded.predictor is None:
        raise SystemExit(f"the demo has no loss model: {loaded.loss}")
    reference = read_reference(path, metadata, loaded.schema)
    if isinstance(reference, str):
        raise SystemExit(reference)
    table = reference.table
    predictor = loaded.predictor
    # The feature whose high values the model errs most on: the one a tilt of +1 raises the mean loss most with.
    errors = np.abs(table.target - table.prediction)
    features = np.column_stack(table.columns)
    z = (features - features.mean(axis=0)) / features.std(axis=0)
    raised = [float(np.average(errors, weights=np.exp(z[:, j]))) for j in range(z.shape[1])]
    worst = loaded.schema.names[int(np.argmax(raised))]
    concept_feature = "bmi"
    samplers: dict[str, ReferenceSampler] = {}

    def draw(rng: np.random.Generator, n: int, change: str) -> tuple[np.ndarray, np.ndarray]:
        if change not in samplers:
            sampler = ReferenceSampler(table, seed=int(rng.integers(1 << 30)))
            if change == "covariate":
                sampler.set_scenario(scenario_for(table.schema, {}, {}, {}, tilt={worst: 1.0}))
            elif change.startswith("concept:"):
                sampler.set_scenario(scenario_for(table.schema, {}, {}, {}, concept={concept_feature: -concept_size(change)}))
            samplers[change] = sampler
        drawn = [samplers[change].draw("1.000001", 0.0) for _ in range(n)]
        return np.array([s.features for s in drawn], dtype=float), np.array([s.label for s in drawn])

    return Case(
        "diabetes",
        loaded.loss,
        lambda rows: np.asarray(predictor.predict(rows), dtype=float),
        draw,
        Reference.from_table(table),
        f"tilt {{{worst!r}: 1.0}} (rows of high {worst} drawn more often, labels true)",
        f"concept {{{concept_feature!r}: −size}} (label −= size·std(y)·z_{concept_feature})",
    )


# -- the measures


def estimates(case: Case, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictions = case.predict(x)
    return predictions, np.asarray(case.loss.estimate_encoded(x, predictions))


def coverage(case: Case, rng: np.random.Generator, change: str, windows: int) -> dict[str, Any]:
    relative = []
    realized_all, estimated_all = [], []
    for _ in range(windows):
        x, y = case.draw(rng, WINDOW, change)
        predictions, estimated = estimates(case, x)
        realized = float(np.mean(np.abs(y - predictions)))
        relative.append(float(np.mean(estimated)) / realized - 1)
        realized_all.append(realized)
        estimated_all.append(float(np.mean(estimated)))
    absolute = np.abs(relative)
    return {
        "windows": windows,
        "within_10pct": float(np.mean(absolute <= 0.10)),
        "median_abs_rel_diff": float(np.median(absolute)),
        "worst_abs_rel_diff": float(np.max(absolute)),
        "mean_rel_diff": float(np.mean(relative)),
        "realized_mae": float(np.mean(realized_all)),
        "estimated_mae": float(np.mean(estimated_all)),
    }


def before_labels(case: Case, rng: np.random.Generator) -> dict[str, Any]:
    """The tracker fed predictions only (no label): calm 1,000, then 300 shifted."""
    tracker = EstimateTracker({VERSION: case.loss.calibration})
    x, _ = case.draw(rng, 1000, "calm")
    tracker.add_predictions((VERSION, e) for e in estimates(case, x)[1])
    calm = tracker.summary()[VERSION]["windows"]["last_300"]
    x, _ = case.draw(rng, 300, "covariate")
    tracker.add_predictions((VERSION, e) for e in estimates(case, x)[1])
    shifted = tracker.summary()[VERSION]["windows"]["last_300"]
    return {
        "labels_joined": tracker.summary()[VERSION]["checked"]["all"]["rows"],
        "calm_estimated_mae": calm["estimated_mae"],
        "calm_band": calm["band"],
        "shifted_estimated_mae": shifted["estimated_mae"],
        "outside_calm_band": abs(shifted["estimated_mae"] - calm["estimated_mae"]) > calm["band"],
    }


def joined_rows(case: Case, x: np.ndarray, y: np.ndarray, start: int) -> list[MetricRow]:
    predictions, estimated = estimates(case, x)
    return [
        MetricRow.of(f"{start + i}.000001", float(t), float(p), model_version=VERSION, estimated_error=float(e))
        for i, (t, p, e) in enumerate(zip(y, predictions, estimated, strict=True))
    ]


def concept_delay(case: Case, rng: np.random.Generator, runs: int, size: float, limit: int = 1000) -> dict[str, Any]:
    delays: list[int | None] = []
    realized, estimated = [], []
    drift_flags = calm_raises = 0
    for _ in range(runs):
        tracker = EstimateTracker({VERSION: case.loss.calibration}, ALERT_Z_USED)
        x, y = case.draw(rng, 1000, "calm")
        calm_raised = any(result.raised for row in joined_rows(case, x, y, 0) for result in tracker.add_rows([row]))
        calm_raises += calm_raised  # a false alarm on the calm start (its first checks are on as few as 100 rows)
        x, y = case.draw(rng, limit, f"concept:{size}")
        delay = None
        changed = joined_rows(case, x, y, 10_000)
        realized.append(np.mean([row.absolute_error for row in changed]))
        estimated.append(np.mean([row.estimated_error or 0.0 for row in changed]))
        for k, row in enumerate(changed, start=1):
            if not calm_raised and any(result.raised for result in tracker.add_rows([row])):
                delay = k
                break
        delays.append(delay)
        # Input drift over the window of the last 300 inputs at that moment (or after 300 changed rows).
        seen = x[max(0, (delay or WINDOW) - WINDOW) : delay or WINDOW]
        monitor = DriftMonitor(case.reference, case.reference.schema, WINDOW, 3600.0)
        monitor.observe(seen, case.predict(seen), 0.0)
        drift_flags += bool(monitor.assess(0.0)["drifted"])
    found = [d for d in delays if d is not None]
    return {
        "size": size,
        "realized_mae_after": float(np.mean(realized)),
        "estimated_mae_after": float(np.mean(estimated)),
        "runs": runs,
        "raised_in": len(found),
        "within_300": sum(d <= 300 for d in found) / runs,
        "median_rows": statistics.median(found) if found else None,
        "worst_rows": max(found) if len(found) == runs else None,
        "input_drift_flagged_runs": drift_flags,
        "raised_on_the_calm_1000": calm_raises,
    }


def calm_stream(case: Case, rng: np.random.Generator, rows: int, change: str = "calm") -> dict[str, Any]:
    tracker = EstimateTracker({VERSION: case.loss.calibration}, ALERT_Z_USED)
    raises = 0
    was = False
    done = 0
    while done < rows:
        x, y = case.draw(rng, 5000, change)
        for row in joined_rows(case, x, y, done):
            for result in tracker.add_rows([row]):
                raises += result.raised and not was
                was = result.raised
        done += len(x)
    return {"rows": done, "raises": raises, "raises_per_10k": raises * 10_000 / done}


def cost(case: Case, rng: np.random.Generator, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for batch in (1, 50, 500):
        x, _ = case.draw(rng, batch, "calm")
        rows = x.tolist()
        predictions = case.predict(x).tolist()
        calls = max(20, repeats // batch)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            case.loss.estimate(rows, predictions)  # as model_api calls it: validated rows, the batch's predictions
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out[f"batch_{batch}"] = {"wall_us_per_sample": wall / calls / batch * 1e6, "cpu_us_per_sample": cpu / calls / batch * 1e6}
    tracker = EstimateTracker({VERSION: case.loss.calibration})
    x, y = case.draw(rng, 2000, "calm")
    joined = joined_rows(case, x, y, 0)
    started = time.perf_counter()
    for start in range(0, len(joined), 50):
        tracker.add_rows(joined[start : start + 50])
    out["tracker_us_per_joined_row_batches_of_50"] = (time.perf_counter() - started) / len(joined) * 1e6
    started = time.perf_counter()
    for start in range(0, len(joined), 50):
        tracker.add_predictions((VERSION, row.estimated_error) for row in joined[start : start + 50])
    out["tracker_us_per_prediction"] = (time.perf_counter() - started) / len(joined) * 1e6
    return out


def measure(case: Case, rng: np.random.Generator, args: argparse.Namespace, sizes: list[float]) -> dict[str, Any]:
    return {
        "covariate": case.covariate,
        "concept": case.concept,
        "calibration": case.loss.calibration.to_json(),
        "calm_windows": coverage(case, rng, "calm", args.windows),
        "covariate_windows": coverage(case, rng, "covariate", args.windows),
        "before_labels": before_labels(case, rng),
        "concept_delay": [concept_delay(case, rng, args.runs, size) for size in sizes],
        "calm_stream": calm_stream(case, rng, args.calm_rows),
        # A covariate shift is no concept shift: the labels follow the inputs, the alert should stay calm.
        "covariate_stream": calm_stream(case, rng, args.calm_rows // 2, "covariate"),
        "cost": cost(case, rng, args.repeats),
    }


def report(figures: dict[str, Any]) -> str:
    lines = ["# Estimated MAE (issue 24)", ""]
    for name, f in figures.items():
        cw, sw, bl, cd, cs = (
            f[k] for k in ("calm_windows", "covariate_windows", "before_labels", "concept_delay", "calm_stream")
        )
        calibration = f["calibration"]
        said = (
            f"- loss model's calibration (out of fold, {calibration['rows']} rows): bias {calibration['bias']:.3g}, "
            f"residual sd {calibration['residual_sd']:.3g}, mean loss {calibration['mean_loss']:.3g} (band z={BAND_Z})"
        )
        lines += [
            f"## {name}",
            "",
            f"- covariate shift: {f['covariate']}; concept shift: {f['concept']}",
            said,
            "",
            "| 300-prediction windows | windows | within ±10 % | median abs. rel. diff | worst | realized MAE | estimated MAE |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, w in (("calm", cw), ("after the covariate shift", sw)):
            lines.append(
                f"| {label} | {w['windows']} | {w['within_10pct']:.1%} | {w['median_abs_rel_diff']:.1%} | "
                f"{w['worst_abs_rel_diff']:.1%} | {w['realized_mae']:.3g} | {w['estimated_mae']:.3g} |"
            )
        before = (
            f"- before any label ({bl['labels_joined']} joined): estimated MAE of the last 300 predictions "
            f"{bl['calm_estimated_mae']:.3g} ± {bl['calm_band']:.3g} calm → {bl['shifted_estimated_mae']:.3g} after 300 "
            f"shifted ({'outside' if bl['outside_calm_band'] else 'inside'} the calm band)"
        )
        concept = "\n".join(
            f"- concept shift of size {d['size']:g} (realized MAE {d['realized_mae_after']:.3g}, estimated "
            f"{d['estimated_mae_after']:.3g}): alert raised in {d['raised_in']}/{d['runs']} runs, {d['within_300']:.0%} "
            f"within 300 joined rows; median {d['median_rows']} rows, worst {d['worst_rows']}; input drift flagged a column "
            f"in {d['input_drift_flagged_runs']}/{d['runs']} runs; raised during the calm 1,000 rows before it in "
            f"{d['raised_on_the_calm_1000']}/{d['runs']} runs"
            for d in cd
        )
        calm = (
            f"- calm stream: {cs['raises']} raises in {cs['rows']:,} joined rows ({cs['raises_per_10k']:.2f} per 10,000), "
            "checked after every row"
        )
        ws = f["covariate_stream"]
        covariate = (
            f"- after the covariate shift (labels true): {ws['raises']} raises in {ws['rows']:,} joined rows "
            f"({ws['raises_per_10k']:.2f} per 10,000)"
        )
        lines += ["", before, concept, calm, covariate, "", "| cost | wall µs/sample | CPU µs/sample |", "|---|---|---|"]
        for batch in (1, 50, 500):
            c = f["cost"][f"batch_{batch}"]
            lines.append(f"| loss model, batch of {batch} | {c['wall_us_per_sample']:.1f} | {c['cpu_us_per_sample']:.1f} |")
        lines += [
            f"| tracker, a joined row (batches of 50) | {f['cost']['tracker_us_per_joined_row_batches_of_50']:.1f} | |",
            f"| tracker, a prediction | {f['cost']['tracker_us_per_prediction']:.2f} | |",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.estimate", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--windows", type=int, default=500, help="300-prediction windows per coverage figure (500)")
    parser.add_argument("--runs", type=int, default=50, help="concept-shift runs (50)")
    parser.add_argument("--calm-rows", type=int, default=100_000, help="joined rows of the calm stream (100,000)")
    parser.add_argument(
        "--concept", type=float, nargs="+", default=[2.0, 1.0], help="synthetic concept shifts: x1's slope 1 → 1 − size (2 1)"
    )
    parser.add_argument(
        "--diabetes-concept", type=float, nargs="+", default=[1.0, 0.5], help="diabetes: std(y) per std of bmi (1 0.5)"
    )
    parser.add_argument("--repeats", type=int, default=2000, help="samples estimated per batch size for the cost (2000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=["synthetic", "diabetes"], default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--alert-z", type=float, default=ALERT_Z, help=f"the alert's z (the service's: {ALERT_Z:g})")
    args = parser.parse_args(argv)
    global ALERT_Z_USED  # noqa: PLW0603 - a bench's knob, set once before anything runs
    ALERT_Z_USED = args.alert_z
    rng = np.random.default_rng(args.seed)
    figures: dict[str, Any] = {}
    if args.only in (None, "synthetic"):
        figures["synthetic"] = measure(synthetic_case(rng), rng, args, args.concept)
    if args.only in (None, "diabetes"):
        with tempfile.TemporaryDirectory() as folder:
            figures["diabetes"] = measure(diabetes_case(Path(folder)), rng, args, args.diabetes_concept)
    figures["check_rows"] = CHECK_ROWS
    print(report({k: v for k, v in figures.items() if isinstance(v, dict)}))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
