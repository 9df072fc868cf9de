"""The error by prediction time with the demo's labels exp:60 late: python -m bench.by_time [SECONDS].

Runs the four services on the real broker (the test harness's pipeline) with LABEL_DELAY_S=exp:60
and TIME_BUCKET_S=60, the demo publishing a sample every 0.2 s for SECONDS (default 180), then
paused; looks at GET /metrics/by-time every 10 s until every label has joined, and prints each
bucket's labelled share and MAE at each look, and at the end pandas' MAE over the bucket's rows.
"""

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from harness.pipeline import running_pipeline
from services.model_api.train import train

BUCKET_S = 60.0


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 180.0
    amqp_url = "amqp://guest:guest@127.0.0.1:5672/"
    looks: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        model_path = Path(folder) / "model.pkl"
        train(model_path)
        with running_pipeline(
            Path(folder), model_path, amqp_url, FEATURES_INTERVAL_S="0.2", LABEL_DELAY_S="exp:60", TIME_BUCKET_S=str(BUCKET_S)
        ) as pipeline:
            metric, features = pipeline.url("metric_api"), pipeline.url("features_api")
            started = time.time()

            def look() -> dict[str, Any]:
                view = httpx.get(f"{metric}/metrics/by-time", timeout=30).json()
                buckets = [(b["start"], b["predictions"], b["labelled_share"], b["stats"]["mae"]) for b in view["buckets"]]
                looks.append({"t": round(time.time() - started), "buckets": buckets})
                return dict(view)

            while time.time() < started + seconds:
                look()
                time.sleep(10)
            httpx.post(f"{features}/features/pause", timeout=10, headers=pipeline.auth)
            sent = httpx.get(f"{features}/features/status", timeout=10).json()["sent"]
            while True:
                view = look()
                if sum(b["labelled"] for b in view["buckets"]) >= sent:
                    break
                time.sleep(10)
            rows = pipeline.rows()
        rows["bucket"] = (rows["id"].astype(float) // BUCKET_S) * BUCKET_S
        pandas_mae = rows.groupby("bucket")["absolute_error"].mean().to_dict()
    final = {b[0]: b for b in looks[-1]["buckets"]}
    report = {
        "sent": sent,
        "seconds_publishing": seconds,
        "seconds_until_all_labelled": looks[-1]["t"],
        "buckets": [
            {
                "start": start,
                "predictions": final[start][1],
                "share_at_each_look": [next((b[2] for b in look["buckets"] if b[0] == start), None) for look in looks],
                "mae_at_each_look": [next((b[3] for b in look["buckets"] if b[0] == start), None) for look in looks],
                "pandas_mae": pandas_mae.get(start),
                "final_minus_pandas": final[start][3] - pandas_mae[start] if start in pandas_mae else None,
            }
            for start in sorted(final)
        ],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
