"""Scale of data: plot_api alone on CSVs of growing size, its first chart and its refreshes as rows arrive."""

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.figures import rounded
from bench.machine import rss_mb
from bench.progress import interrupted, say
from harness.processes import ServiceProcess, free_port, service_env, stop_all, wait_until
from services.common.files import METRIC_LOG
from services.common.metric_rows import METRIC_LOG_HEADER, format_columns
from services.plot_api.charts import CHARTS

SCALE_APPENDS = 3  # incremental refreshes measured per CSV size
SCALE_APPEND_ROWS = 100


def synthetic_rows(count: int, first_ts: float, rng: np.random.Generator) -> bytes:
    """CSV lines (no header) as metric_api writes them: id, y_true, y_pred, absolute_error."""
    y_true = rng.integers(25, 347, size=count).astype(float)
    y_pred = y_true + rng.normal(0.0, 50.0, size=count)
    ids = [f"{ts:.6f}" for ts in (first_ts + np.arange(count) * 1e-4).tolist()]
    return format_columns(ids, y_true.tolist(), y_pred.tolist()).encode()


def render_stats(service: ServiceProcess) -> dict[str, tuple[float, float]]:
    """(sum, count) of plot_api's render times: the whole refresh (``plot_render_seconds``,
    key "refresh") and each chart (``plot_chart_render_seconds{chart=...}``); empty if unreadable."""
    try:
        text = httpx.get(f"{service.url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("plot_render_seconds", "plot_chart_render_seconds"):
            continue
        for sample in family.samples:
            kind = sample.name.rsplit("_", 1)[-1]
            if kind in ("sum", "count"):
                found.setdefault(sample.labels.get("chart", "refresh"), {})[kind] = float(sample.value)
    return {key: (v["sum"], v["count"]) for key, v in found.items() if {"sum", "count"} <= v.keys()}


def scale_one(work: Path, rows: int, problems: list[str]) -> dict[str, Any]:
    logs = work / f"scale-{rows}"
    logs.mkdir()
    rng = np.random.default_rng(rows)
    csv = logs / METRIC_LOG
    began = time.perf_counter()
    with csv.open("wb") as f:
        f.write((METRIC_LOG_HEADER + "\n").encode())
        first_ts = time.time() - rows * 1e-4 - 60
        for start in range(0, rows, 200_000):
            chunk = min(200_000, rows - start)
            f.write(synthetic_rows(chunk, first_ts + start * 1e-4, rng))
    say(f"scale: wrote {rows} rows ({csv.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - began:.1f}s")
    next_ts = time.time()

    env = service_env(
        LOGS_DIR=str(logs),
        PLOT_INTERVAL_S="1",
        PLOT_PORT=str(free_port()),
        METRIC_API_URL=f"http://127.0.0.1:{free_port()}",
    )
    service = ServiceProcess("plot_api", env, logs)
    url = f"{service.url}/plot/latest.png"
    result: dict[str, Any] = {"rows": rows, "csv_mb": round(csv.stat().st_size / 1e6, 1)}
    try:
        started = time.perf_counter()
        service.start()

        def first_png() -> httpx.Response | None:
            assert service.process is not None and service.process.poll() is None, f"plot_api exited:\n{service.output()[-2000:]}"
            try:
                answer = httpx.get(url, timeout=10)
            except httpx.TransportError:
                return None
            return answer if answer.status_code == 200 else None

        first = wait_until(first_png, 600, f"plot_api's first histogram of {rows} rows", 0.02)
        result["first_png_s"] = round(time.perf_counter() - started, 3)
        first_stats = render_stats(service)
        total, count = first_stats.get("refresh", (None, None))
        result["first_render_s"] = rounded(total, 3) if count == 1 else None
        assert service.process is not None  # started above
        pid = service.process.pid
        result["rss_after_first_mb"] = rounded(rss_mb(pid))

        etag = first.headers.get("etag")
        walls: list[float] = []
        renders: dict[str, list[float]] = {key: [] for key in ("refresh", *CHARTS)}
        for _ in range(SCALE_APPENDS):
            before = render_stats(service)
            with csv.open("ab") as f:
                appended = time.perf_counter()
                f.write(synthetic_rows(SCALE_APPEND_ROWS, next_ts, rng))
                f.flush()
            next_ts += SCALE_APPEND_ROWS * 1e-4 + 1

            def changed(old: str | None = etag) -> str | None:
                answer = httpx.get(url, headers={"If-None-Match": old or ""}, timeout=10)
                new = answer.headers.get("etag")
                return new if answer.status_code == 200 and new != old else None

            etag = wait_until(changed, 120, f"the histogram to change after appending to {rows} rows", 0.01)
            walls.append(time.perf_counter() - appended)
            after = render_stats(service)
            for key, times in renders.items():
                if key in before and key in after and after[key][1] > before[key][1]:
                    times.append((after[key][0] - before[key][0]) / (after[key][1] - before[key][1]))
        result["refresh_wall_s"] = rounded(float(np.median(walls)), 3)
        result["refresh_wall_max_s"] = rounded(max(walls), 3)
        refresh = renders.pop("refresh")
        result["refresh_render_s"] = rounded(float(np.median(refresh)), 3) if refresh else None
        result["refresh_render_max_s"] = rounded(max(refresh), 3) if refresh else None
        result["chart_render_s"] = {key: rounded(float(np.median(t)), 3) if t else None for key, t in renders.items()}
        result["rss_after_refresh_mb"] = rounded(rss_mb(pid))
        histogram = logs / CHARTS["histogram"].file
        result["png_bytes"] = histogram.stat().st_size if histogram.exists() else None
    finally:
        try:
            stop_all([service])
        except AssertionError as exc:
            if not interrupted():
                problems.append(f"scale {rows}: {exc}")
        csv.unlink(missing_ok=True)  # up to ~60 MB each; the logs stay for a look afterwards
    return result
