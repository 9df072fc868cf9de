"""The MAE alert on the real pipeline: ``python -m bench.alerts`` (the four services on the real broker).

The demo model (train's, in a temporary folder) and its reference rows; samples go in through
``POST /samples`` (features and label, as a user's own rows do), drawn from the reference rows with
their labels set so that each row's absolute error is exactly ``scale`` times the reference's error
for that row (``y_true = prediction + scale · (target - prediction)``, the prediction the model makes
for those features, which the reference recorded). So the calm rows' errors are drawn from the very
distribution the CUSUM was calibrated on, and a shifted row's error is 1.2 times one of them: a +20 %
MAE shift (and +20 % of the errors' spread).

1. calm: ``--calm`` rows (120,000 by default) with scale 1: each raise of the ``mae`` alert (the
   webhook's POSTs, ``details.row`` says at which row of the stream) is a false alarm;
2. ``--episodes`` times: ``--shift-rows`` rows with scale 1.2, then ``--after-rows`` calm rows:
   the delay is the number of shifted rows up to the raise (the position of the raising row in
   metric_log.csv, less that of the episode's first shifted row, plus one); and how many calm rows
   the alert took to clear afterwards.

Prints Markdown; ``--json PATH`` writes the figures too. docs/monitoring.md quotes a run.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from harness.pipeline import Pipeline, running_pipeline
from harness.processes import wait_until
from services.common.reference import read_reference
from services.common.registration import read_registration
from services.common.settings import Settings
from services.features_api.intake import MAX_SAMPLES
from services.metric_api.cusum import calibrate
from services.model_api.train import train
from tests.json_stub import JsonStub

SHIFT = 1.2


class Stream:
    """Rows of the reference, sent in requests of MAX_SAMPLES, with their errors scaled."""

    def __init__(self, pipeline: Pipeline, model_path: Path, seed: int) -> None:
        registration = read_registration(model_path)
        loaded = read_reference(model_path, registration.metadata, registration.schema)
        assert not isinstance(loaded, str), loaded
        self.table = loaded.table
        self.errors = np.abs(self.table.target - self.table.prediction)
        self.pipeline = pipeline
        self.rng = np.random.default_rng(seed)
        self.client = httpx.Client(timeout=120)
        self.sent = 0

    def send(self, count: int, scale: float) -> list[str]:
        ids: list[str] = []
        while len(ids) < count:
            n = min(MAX_SAMPLES, count - len(ids))
            rows = self.rng.integers(self.table.rows, size=n)
            samples = [
                {
                    "features": self.table.row(int(i)),
                    "y_true": float(self.table.prediction[i] + scale * (self.table.target[i] - self.table.prediction[i])),
                }
                for i in rows
            ]
            answer = self.client.post(f"{self.pipeline.url('features_api')}/samples", json={"samples": samples})
            answer.raise_for_status()
            ids.extend(answer.json()["ids"])
        self.sent += count
        return ids

    def joined(self, timeout: float = 600) -> list[str]:
        """The ids of metric_log.csv in the order they were written, once every row sent is there."""
        wait_until(lambda: len(self.pipeline.rows()) >= self.sent, timeout, "every row sent to be written", interval=0.5)
        return list(self.pipeline.rows()["id"])


def run(calm: int, episodes: int, shift_rows: int, after_rows: int, seed: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    model_path = work / "model" / "myfile.pkl"
    model_path.parent.mkdir()
    train(model_path)
    amqp_url = str(Settings().AMQP_URL)
    with JsonStub("/alerts") as webhook, running_pipeline(work, model_path, amqp_url, ALERT_WEBHOOK_URL=webhook.url) as pipeline:
        stream = Stream(pipeline, model_path, seed)
        calibration = calibrate(stream.errors)
        started = time.monotonic()
        stream.send(calm, 1.0)
        order = stream.joined()
        calm_rows = len(order)
        shifted_ids: list[list[str]] = []
        for _ in range(episodes):
            shifted_ids.append(stream.send(shift_rows, SHIFT))
            stream.send(after_rows, 1.0)
        order = stream.joined()
        time.sleep(2)  # the webhook's last POSTs
        seconds = time.monotonic() - started
    posts = [p for p in webhook.posted if p["alert"] == "mae"]
    position = {sample_id: i + 1 for i, sample_id in enumerate(order)}  # 1-based, as details.row
    raises = [p["details"]["row"] for p in posts if p["state"] == "raised"]
    clears = [p["details"]["row"] for p in posts if p["state"] == "cleared"]
    false_alarms = [row for row in raises if row <= calm_rows]
    delays, missed, clear_delays, shifted_clears = [], 0, [], 0
    segments = [(min(position[i] for i in ids), max(position[i] for i in ids)) for ids in shifted_ids]
    for first, last in segments:
        raised = [row for row in raises if first <= row <= last]
        shifted_clears += sum(first <= row <= last for row in clears)  # cleared while the errors were still up
        if not raised:
            missed += 1
            continue
        delays.append(raised[0] - first + 1)
        cleared = [row for row in clears if row > last]
        if cleared:
            clear_delays.append(cleared[0] - last)
    # Raises in the calm rows of the episodes (after a shift ended and the alert cleared, before the next).
    calm_after = [row for row in raises if row > calm_rows and not any(f <= row <= la for f, la in segments)]
    return {
        "rows": len(order),
        "seconds": round(seconds, 1),
        "calibration": calibration.to_json(),
        "calm_rows": calm_rows,
        "false_alarms": len(false_alarms),
        "false_alarms_per_10000": round(len(false_alarms) / calm_rows * 10_000, 3),
        "episodes": episodes,
        "missed": missed,
        "delay_median": float(np.median(delays)) if delays else None,
        "delay_p90": round(float(np.percentile(delays, 90)), 1) if delays else None,
        "delay_mean": round(float(np.mean(delays)), 1) if delays else None,
        "delays": delays,
        "clear_median": float(np.median(clear_delays)) if clear_delays else None,
        "clear_p90": round(float(np.percentile(clear_delays, 90)), 1) if clear_delays else None,
        "clears_while_shifted": shifted_clears,
        "raises_in_episode_calm_rows": len(calm_after),
        "shifted_rows": episodes * shift_rows,
        "raises": len(raises),
        "clears": len(clears),
    }


def report(figures: dict[str, Any]) -> str:
    c = figures["calibration"]
    return "\n".join(
        [
            f"MAE alert (CUSUM) on the real pipeline: {figures['rows']:,} rows in {figures['seconds']} s",
            "",
            "| | figure |",
            "|---|---|",
            f"| reference errors | {c['rows']} rows, mean {c['mean']:.2f}, std {c['std']:.2f} |",
            (
                f"| calibration | k = {c['k']:.4f}, h = {c['h']:.3f} (std units); ARL0 {c['arl0']:,.0f} rows, "
                f"ARL1 (+20 %) {c['arl1']:.0f} rows |"
            ),
            (
                f"| false alarms | {figures['false_alarms']} in {figures['calm_rows']:,} calm rows = "
                f"{figures['false_alarms_per_10000']} per 10,000 |"
            ),
            (
                f"| +20 % shift, delay (rows) | median {figures['delay_median']}, p90 {figures['delay_p90']}, "
                f"mean {figures['delay_mean']} over {figures['episodes']} shifts ({figures['missed']} missed) |"
            ),
            (
                f"| back to calm, clear (rows) | median {figures['clear_median']}, p90 {figures['clear_p90']}; "
                f"{figures['raises_in_episode_calm_rows']} raises in the episodes' calm rows |"
            ),
            (
                f"| cleared while still +20 % | {figures['clears_while_shifted']} in {figures['shifted_rows']:,} shifted rows "
                "(each raised again) |"
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__.splitlines()[0])
    parser.add_argument("--calm", type=int, default=120_000)
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--shift-rows", type=int, default=1000)
    parser.add_argument("--after-rows", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    figures = run(args.calm, args.episodes, args.shift_rows, args.after_rows, args.seed)
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
