"""plot_api's charts (its registry) and its dashboard, with the real pipeline and a real headless Chromium."""

import functools
import io
import os
import re
import shutil
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import matplotlib.image
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.pipeline import CHART_ROUTES, Pipeline, running_pipeline
from harness.processes import ServiceProcess, free_port, service_env, stop_all, wait_until
from services.common.contracts.summary import Summary
from services.plot_api.charts import CHARTS
from tests.browser import HEIGHT, WIDTH, Chromium, Page
from tests.json_stub import JsonStub

pytestmark = [pytest.mark.broker, pytest.mark.slow]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, model_path: Path, amqp_url: str) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path_factory.mktemp("dashboard"), model_path, amqp_url) as pipeline:
        yield pipeline


def is_served(written: Path, url: str) -> bool:
    """Whether the file in LOGS_DIR holds what the route serves."""
    return written.exists() and written.read_bytes() == httpx.get(url).content


def redrawn(url: str, etag: str) -> bool:
    return httpx.get(url).headers["etag"] != etag


def test_each_chart_is_served_with_validators_and_written_to_logs_dir(pipeline: Pipeline) -> None:
    pipeline.burst(120)
    pipeline.wait_all_joined()
    first = pipeline.settled_charts()
    plot = pipeline.url("plot_api")
    for route, answer in first.items():
        assert answer.headers["content-type"] == "image/png", route
        assert answer.content.startswith(PNG_SIGNATURE), route
        height, width = matplotlib.image.imread(io.BytesIO(answer.content)).shape[:2]
        assert width > height > 0, route
        assert answer.headers["cache-control"] == "no-cache", route
        assert parsedate_to_datetime(answer.headers["last-modified"]).tzinfo is not None, route
        etag = answer.headers["etag"]
        again = httpx.get(f"{plot}{route}", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag, route
        assert httpx.get(f"{plot}{route}", headers={"If-None-Match": '"something-else"'}).status_code == 200, route
        written = pipeline.logs_dir / CHART_ROUTES[route]
        wait_until(functools.partial(is_served, written, f"{plot}{route}"), 10, f"{written} to be the served {route}")
    assert len({a.content for a in first.values()}) == len(CHARTS)  # each its own picture

    pipeline.burst(30)
    pipeline.wait_all_joined()
    for route, old in first.items():
        wait_until(functools.partial(redrawn, f"{plot}{route}", old.headers["etag"]), 10, f"{route} redrawn after new rows")
        assert httpx.get(f"{plot}{route}", headers={"If-None-Match": old.headers["etag"]}).status_code == 200


def test_render_times_are_exported_for_prometheus(pipeline: Pipeline) -> None:
    pipeline.burst(20)
    pipeline.wait_all_joined()
    pipeline.settled_charts()
    text = httpx.get(f"{pipeline.url('plot_api')}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["plot_render_seconds"].type == "histogram"
    refresh = {s.name: s.value for s in families["plot_render_seconds"].samples if not s.labels.get("le")}
    assert refresh["plot_render_seconds_count"] >= 1 and refresh["plot_render_seconds_sum"] > 0
    per_chart = {
        s.labels["chart"]: s.value
        for s in families["plot_chart_render_seconds"].samples
        if s.name == "plot_chart_render_seconds_count"
    }
    assert families["plot_chart_render_seconds"].type == "histogram"
    assert set(per_chart) == set(CHARTS)
    assert all(count >= 1 for count in per_chart.values())


def shown(page: Page, element_id: str) -> str:
    return page.evaluate(f"document.getElementById({element_id!r}).textContent")


def shown_count(page: Page) -> int | None:
    text = shown(page, "count").replace(",", "")
    return int(text) if text.isdigit() else None


def image_state(page: Page) -> list[dict]:
    return page.evaluate(
        "[...document.images].map(i => ({id: i.id, src: i.dataset.src, etag: i.dataset.etag, complete: i.complete,"
        " naturalWidth: i.naturalWidth, shownWidth: i.getBoundingClientRect().width}))"
    )


def wait_until_shown(page: Page, charts: dict[str, httpx.Response], what: str) -> list[dict]:
    """Wait until the page shows exactly these versions (ETags) of the charts, loaded."""
    expected = {route.lstrip("/"): answer.headers["etag"] for route, answer in charts.items()}
    return wait_until(
        lambda: (
            (state := image_state(page))
            and {i["src"]: i.get("etag") for i in state} == expected
            and all(i["complete"] and i["naturalWidth"] > 0 for i in state)
            and state
        ),
        30,
        what,
    )


def test_the_dashboard_in_a_real_browser_updates_itself(pipeline: Pipeline, browser: Chromium, tmp_path: Path) -> None:
    pipeline.burst(300)
    rows = len(pipeline.wait_all_joined())
    charts = pipeline.settled_charts()
    plot, metric = pipeline.url("plot_api"), pipeline.url("metric_api")
    page = browser.open(f"{plot}/")
    images = wait_until_shown(page, charts, "every chart to load in the page")
    assert [i["id"] for i in images] == list(CHARTS)  # in the registry's order
    # Readable on a laptop screen: no sideways scrolling, charts shown at least 3/4 of their size.
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    assert all(i["shownWidth"] >= 0.75 * i["naturalWidth"] for i in images), images

    summary = httpx.get(f"{metric}/metrics/summary").json()
    assert summary["count"] == rows
    wait_until(lambda: shown_count(page) == rows, 15, f"the page to show {rows} rows")
    assert shown(page, "mae") == f"{summary['mae']:.3f}"
    assert shown(page, "rmse") == f"{summary['rmse']:.3f}"
    page.screenshot(tmp_path / "dashboard-first.png")

    page.evaluate("window.stillTheSamePage = true")  # a reload would forget it
    pipeline.burst(200)
    more = len(pipeline.wait_all_joined())
    assert more == rows + 200
    wait_until(lambda: shown_count(page) == more, 30, f"the page to show {more} rows without a reload")
    summary = httpx.get(f"{metric}/metrics/summary").json()
    assert summary["count"] == more
    assert shown(page, "mae") == f"{summary['mae']:.3f}"
    redrawn = pipeline.settled_charts()
    assert all(redrawn[r].headers["etag"] != charts[r].headers["etag"] for r in CHART_ROUTES)
    wait_until_shown(page, redrawn, "the page to show every chart redrawn from the new rows")
    assert page.evaluate("window.stillTheSamePage") is True

    screenshot = page.screenshot(tmp_path / "dashboard.png")
    page.screenshot(tmp_path / "dashboard-full.png", full_page=True)
    height, width = matplotlib.image.imread(str(screenshot)).shape[:2]
    assert (width, height) == (WIDTH, HEIGHT)
    print(f"dashboard screenshot: {screenshot}")
    if copy_to := os.environ.get("DASHBOARD_SCREENSHOT"):  # e.g. docs/dashboard.png, to refresh the README's
        shutil.copyfile(screenshot, copy_to)

    assert page.exceptions() == []
    foreign = [u for u in page.requested_urls() if not u.startswith((plot, "blob:", "data:"))]
    assert foreign == [], "the page must load nothing from elsewhere (offline machine, no CDN)"
    assert all(shown(page, k) != "" for k in ("me", "r2", "orphans", "last_row"))


def window(count: int, mae: float | None, **other: float | None) -> dict:
    keys = ("rmse", "me", "mape", "r2", "max_ae", "p50_ae", "p90_ae", "p95_ae", "baseline_mae", "skill")
    return {"count": count, "mae": mae, **dict.fromkeys(keys), **other}


NEW_SUMMARY = {
    "count": 1234,
    "mae": 41.5,
    "rmse": 52.25,
    "windows": {
        "all": window(1234, 41.5, rmse=52.25, me=-1.25, r2=0.4321, p50_ae=35.125, p95_ae=101.5, skill=0.123),
        "last_100": window(100, 48.75),
        "last_1000": window(1000, 42.0),
        "last_5m": window(0, None),
    },
    "by_model_version": {"a1b2c3d4e5f6": window(1000, 40.0, rmse=50.0, me=-1.0, r2=0.45), "0f9e8d7c6b5a": window(234, 47.9)},
    "join": {
        "pending_y_true": 3,
        "pending_y_pred": 1,
        "orphans": 2,
        "late_joins": 0,
        "dead_lettered": 5,
        "lag_p50_s": 0.01,
        "lag_p99_s": 0.2,
    },
    "labels": {
        "predictions": 1240,
        "labelled": 1234,
        "labelled_share": 0.995161,
        "lag_p50_s": 8.04,
        "lag_p99_s": 7300.0,
        "waiting": {
            "y_true": {"<10s": 3, "10s-1m": 0, "1m-10m": 0, "10m-1h": 0, "1h-1d": 0, ">1d": 0},
            "y_pred": {"<10s": 1, "10s-1m": 0, "1m-10m": 0, "10m-1h": 0, "1h-1d": 2, ">1d": 1200},
        },
    },
    "latency": {"p50_s": 0.012, "p99_s": 0.045},
    "last_id": "1700000000.000001",
    "last_row_at": 1700000000.000001,
    "rows_per_s": 12.5,
    "excluded_rows": 0,
    "alert": {"window": "last_100", "mae": 48.75, "threshold": 45.0, "since": 1699999990.0},
    "baseline": {"mean": 153.74, "source": "BASELINE_MEAN", "problem": None},
    "csv": "logs/metric_log.csv",
}
Summary.model_validate(NEW_SUMMARY)  # what metric_api serves, or plot_api would refuse it


def test_the_dashboard_shows_every_number_of_the_summary(browser: Chromium, tmp_path: Path) -> None:
    # A stand-in metric_api serving NEW_SUMMARY: the page's mapping of every field, checked
    # without waiting for a pipeline to produce alerts and several model versions.
    with JsonStub("/metrics/summary", NEW_SUMMARY) as stub:
        env = service_env(
            LOGS_DIR=str(tmp_path),
            PLOT_INTERVAL_S="0.5",
            PLOT_PORT=str(free_port()),
            METRIC_API_URL=f"http://127.0.0.1:{stub.port}",
        )
        plot = ServiceProcess("plot_api", env, tmp_path).start()
        try:
            plot.wait_healthy()
            page = browser.open(f"{plot.url}/")
            wait_until(lambda: shown(page, "count") == "1,234", 15, "the page to show the summary")
            expected = {
                "mae": "41.500",
                "rmse": "52.250",
                "me": "-1.250",
                "r2": "0.432",
                "skill": "12.3 %",
                "p50_ae": "35.125",
                "p95_ae": "101.500",
                "mae_last_100": "48.750",
                "rows_per_s": "12.5",
                "latency_p99": "45.0 ms",
                "pending_y_true": "3",
                "pending_y_pred": "1",
                "orphans": "2",
                "dead_lettered": "5",
                "labelled_share": "99.5 %",
                "label_lag_p50": "8.0 s",
                "label_lag_p99": "2.0 h",
            }
            assert {k: shown(page, k) for k in expected} == expected
            assert "ago" in shown(page, "last_row")
            alert = page.evaluate("(a => a.offsetHeight > 0 && a.textContent)(document.getElementById('alert'))")
            assert alert and "last 100" in alert and "48.750" in alert and "45.000" in alert
            table = page.evaluate(
                "[...document.querySelectorAll('#by_model_version tr')].map(r => [...r.cells].map(c => c.textContent))"
            )
            assert table == [
                ["a1b2c3d4e5f6", "1,000", "40.000", "50.000", "-1.000", "0.450"],
                ["0f9e8d7c6b5a", "234", "47.900", "—", "—", "—"],
            ]
            waiting = page.evaluate(
                "[...document.querySelectorAll('#waiting tr')].map(r => [...r.cells].map(c => c.textContent))"
            )
            assert waiting == [
                ["half", "<10s", "10s-1m", "1m-10m", "10m-1h", "1h-1d", ">1d"],
                ["predictions without label", "1", "0", "0", "0", "2", "1,200"],
                ["labels without prediction", "3", "0", "0", "0", "0", "0"],
            ]
            page.screenshot(tmp_path / "dashboard-all-numbers.png")
            assert page.exceptions() == []
        finally:
            stop_all([plot])


WIDE_DRIFTED = ["size_030", "city_121", "size_150", "size_198", "prediction"]
TILES = "[...document.querySelectorAll('#{} .tile')].map(t => [t.id.replace(/^drift_/, ''), t.dataset.state])"


def tiles(page: Page, container: str) -> list[list[str]]:
    return page.evaluate(TILES.format(container))


def tile_text(page: Page, name: str) -> str:
    return page.evaluate(f"[...document.getElementById('drift_' + {name!r}).children].map(c => c.textContent).join(' | ')")


def drift_shown(page: Page, status: str) -> bool:
    return shown(page, "drift_status").startswith(status)


def test_the_drift_panel_shows_any_schema_drifted_first_and_folds_the_rest(browser: Chromium, tmp_path: Path) -> None:
    # A stand-in model_api serving the report of a 200-feature schema (every third categorical) made
    # by model_api's own drift core: 4 features and the prediction drifted, a few values missing (as
    # often as in the reference: not drift).
    from services.plot_api.drift_chart import chosen_columns
    from tests.unit.plot_api.test_drift_chart import drift_report, mixed_schema, parsed, unavailable_report

    schema = mixed_schema(200)
    missing = {"size_090": 0.3, "city_004": 0.1, "size_000": 0.02, "size_003": 0.01, "city_007": 0.01, "size_006": 0.01}
    refused = {"queue": {"wrong_type": 3, "schema_changed": 1}, "http": {"missing_feature": 2, "wrong_type": 1}}
    report = drift_report(schema, WIDE_DRIFTED, seed=1, missing=missing, reference_missing=missing, refused=refused)
    assert set(report["drifted"]) == set(WIDE_DRIFTED), report["drifted"]
    with JsonStub("/drift", report) as model_api, JsonStub("/metrics/summary", NEW_SUMMARY) as metric_api:
        env = service_env(
            LOGS_DIR=str(tmp_path),
            PLOT_INTERVAL_S="0.5",
            PLOT_PORT=str(free_port()),
            METRIC_API_URL=f"http://127.0.0.1:{metric_api.port}",
            MODEL_API_URL=f"http://127.0.0.1:{model_api.port}",
        )
        plot = ServiceProcess("plot_api", env, tmp_path).start()
        try:
            plot.wait_healthy()
            page = browser.open(f"{plot.url}/")
            wait_until(lambda: drift_shown(page, "drifted: "), 15, "the page to show the drift report")
            shown_tiles, folded = tiles(page, "drift_tiles"), tiles(page, "drift_more_tiles")
            # One row of tiles: the drifted first, then those closest to drifting, as the drift chart picks them.
            picked, _ = chosen_columns(parsed(report), panels=12)
            assert [name for name, _ in shown_tiles] == [name for name, _ in picked]
            assert {name for name, state in shown_tiles[:5]} == set(WIDE_DRIFTED)
            assert [state for _, state in shown_tiles] == ["drifted"] * 5 + ["calm"] * 7
            # The other 189 behind a closed fold, in schema order; the page stays about a screen high.
            assert len(folded) == 201 - 12 and all(state == "calm" for _, state in folded)
            order = [*schema.names, "prediction"]
            assert [name for name, _ in folded] == sorted((name for name, _ in folded), key=order.index)
            fold = "(d => ({open: d.open, hidden: d.hidden, summary: d.querySelector('summary').textContent}))"
            assert page.evaluate(f"{fold}(document.getElementById('drift_more'))") == {
                "open": False,
                "hidden": False,
                "summary": "189 more columns — calm",
            }
            assert page.evaluate("document.getElementById('drift_more').offsetHeight") < 30  # its summary line only
            assert page.evaluate(f"document.getElementById('drift_{folded[-1][0]}').checkVisibility()") is False
            assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
            assert page.evaluate("document.getElementById('drift_panel').offsetHeight") < HEIGHT / 2
            # Each tile's statistics by kind, cut short rather than overflowing its box.
            categorical, top = tile_text(page, "city_121"), report["features"]["city_121"]["window"]["top"][0]
            assert categorical.startswith("\u26a0 city_121 | χ² p ") and f" | top {top['label']} " in categorical
            assert f"unseen {round(100 * report['features']['city_121']['unseen_share'])}\u00a0%" in categorical
            hover = page.evaluate("document.getElementById('drift_city_121').title")
            assert hover.startswith("city_121 (categorical) — drifted, by the chi-square test\n"), hover
            numeric = tile_text(page, "size_030")
            assert "KS p " in numeric and "W " in numeric and "outside " in numeric
            assert "missing 30\u00a0%" in tile_text(page, "size_090") and "missing" not in tile_text(page, "size_093")
            overflowing = page.evaluate(
                "[...document.querySelectorAll('#drift_tiles .tile')].filter(t => t.scrollWidth > t.clientWidth).map(t => t.id)"
            )
            assert overflowing == []
            refusals = shown(page, "drift_refused")
            assert refusals.endswith(": missing feature 2 · wrong type 4 · schema changed 1"), refusals
            quality = shown(page, "drift_quality")
            assert quality.startswith("data quality over 300 inputs: missing values in size_090 90, city_004 30, "), quality
            assert "and 1 more feature " in quality and "no unseen categories" not in quality
            banner = page.evaluate("(a => a.offsetHeight > 0 && a.textContent)(document.getElementById('drift_alert'))")
            assert banner and "size_030" in banner and "prediction" in banner
            threshold = re.fullmatch(r"drifted when a test's p ≤ ([0-9.e+-]+)", shown(page, "drift_rule"))
            assert threshold and float(threshold[1]) == pytest.approx(report["rule"]["threshold"], rel=0.01)
            assert f"(a test's p ≤ {threshold[1]})" in banner
            status = shown(page, "drift_status")
            assert status.endswith(" · 200 features (133 numeric, 67 categorical) and the prediction"), status
            ids = page.evaluate("[...document.querySelectorAll('[id]')].map(e => e.id)")
            assert len(ids) == len(set(ids)), "an id given twice (the drift chart's image is #drift)"
            chart = "(i => i.complete && i.naturalWidth > 0 && i.dataset.etag)(document.getElementById('drift'))"
            wait_until(lambda: page.evaluate(chart), 15, "the drift chart of the 200 columns to load")
            page.screenshot(tmp_path / "dashboard-drift-wide.png")

            # Opened, the fold stays open across refreshes and scrolls within the panel.
            page.evaluate("document.querySelector('#drift_more summary').click()")
            model_api.body = drift_report(schema, seed=3)  # a calm window of the same schema
            wait_until(lambda: drift_shown(page, "calm"), 15, "the page to show the calm report")
            assert page.evaluate("document.getElementById('drift_more').open") is True
            assert all(state == "calm" for _, state in tiles(page, "drift_tiles") + tiles(page, "drift_more_tiles"))
            assert shown(page, "drift_more_summary") == "189 more columns — calm"
            assert page.evaluate("document.getElementById('drift_alert').offsetHeight") == 0
            assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
            assert page.evaluate("document.getElementById('drift_panel').offsetHeight") < HEIGHT
            assert shown(page, "drift_refused").endswith(": none")
            page.screenshot(tmp_path / "dashboard-drift-wide-open.png")
            print(f"dashboard screenshots: {tmp_path / 'dashboard-drift-wide.png'}, dashboard-drift-wide-open.png beside it")

            # Drift unavailable (no reference), then a report missing most fields: plot_api refuses it
            # (its contract, services/common/contracts/drift.py) and the page says why, never broken.
            model_api.body = unavailable_report(mixed_schema(1)).model_dump(mode="json")
            wait_until(lambda: drift_shown(page, "unavailable: the model has no reference file"), 15, "drift unavailable")
            assert tiles(page, "drift_tiles") == [["size_000", "none"], ["prediction", "none"]]
            assert page.evaluate("document.getElementById('drift_more').hidden") is True
            model_api.body = {"status": "drifted", "drifted": ["x"], "features": {"x": {"drifted": True, "kind": "categorical"}}}
            wait_until(lambda: drift_shown(page, "model service not answering"), 15, "the page to show the refusal")
            assert "no drift report plot_api can read: drifted.reason: Field required" in shown(page, "drift_status")
            assert page.exceptions() == []
        finally:
            stop_all([plot])
