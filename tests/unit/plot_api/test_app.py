"""plot_api's app in process (its lifespan and refresh loop run; no broker, no metric_api):
the one chart route, the files it writes, the dashboard page, and adding a chart."""

import asyncio
import io
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from httpx import AsyncClient, Response
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from prometheus_client.parser import text_string_to_metric_families

from services.common.files import METRIC_LOG
from services.common.settings import Settings
from services.plot_api.app import create_app
from services.plot_api.charts import CHARTS, LOG_WINDOWS, AllRows, ChartSpec, Window, registry
from services.plot_api.distribution import ErrorDistribution
from tests.unit.in_process import in_process
from tests.unit.metric_log import append, metric_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INTERVAL_S = 0.05
LOG_CHARTS = {name: chart for name, chart in CHARTS.items() if chart.window in LOG_WINDOWS}  # drawn from the metric log


def settings(logs: Path) -> Settings:
    return Settings(
        LOGS_DIR=logs, PLOT_INTERVAL_S=INTERVAL_S, METRIC_API_URL="http://127.0.0.1:9", MODEL_API_URL="http://127.0.0.1:9"
    )


async def served(client: AsyncClient, url: str, unlike: str | None = None, within_s: float = 20) -> Response:
    """The chart at ``url`` once the refresh loop has drawn it (again, if its ETag was ``unlike``)."""
    deadline = time.monotonic() + within_s
    while True:
        answer = await client.get(url)
        if answer.status_code == 200 and answer.headers["etag"] != unlike:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not served anew within {within_s} s: {answer.status_code} {answer.text[:200]}")
        await asyncio.sleep(INTERVAL_S / 2)


def chart_route_docs(openapi: dict) -> tuple[dict, list[str]]:
    """The chart route's OpenAPI operation, and the values its path parameter lists."""
    operation = openapi["paths"]["/plot/{image}"]["get"]
    (parameter,) = [p for p in operation["parameters"] if p["in"] == "path"]
    return operation, parameter["schema"]["enum"]


def test_before_any_row_each_chart_is_a_404_naming_the_log(tmp_path: Path) -> None:
    async def scenario(client: AsyncClient) -> list[Response]:
        await asyncio.sleep(4 * INTERVAL_S)  # a few refreshes, none with rows
        for _ in range(200):  # until a refresh has asked model_api (at most 10 s)
            if "did not answer" in (await client.get(CHARTS["drift"].url)).text:
                break
            await asyncio.sleep(INTERVAL_S)
        return [await client.get(chart.url) for chart in CHARTS.values()]

    answers = dict(zip(CHARTS, in_process(create_app(settings(tmp_path)), scenario), strict=True))
    for name in LOG_CHARTS:
        assert answers[name].status_code == 404, name
        assert str(tmp_path / METRIC_LOG) in answers[name].json()["detail"] and "no rows" in answers[name].json()["detail"]
    # model_api (MODEL_API_URL) does not answer here either: the drift chart's 404 says so
    assert answers["drift"].status_code == 404 and "did not answer GET /drift" in answers["drift"].json()["detail"]
    assert not any(tmp_path.glob("*.png"))


@pytest.mark.parametrize("chart", LOG_CHARTS.values(), ids=list(LOG_CHARTS))
def test_each_chart_is_served_from_memory_with_validators_and_written_to_its_file(chart: ChartSpec, tmp_path: Path) -> None:
    csv = tmp_path / METRIC_LOG

    async def scenario(client: AsyncClient) -> None:
        append(csv, metric_rows(0, 200, seed=1))
        first = await served(client, chart.url)
        assert first.headers["content-type"] == "image/png" and first.content.startswith(PNG_SIGNATURE)
        height, width = matplotlib.image.imread(io.BytesIO(first.content), format="png").shape[:2]
        assert width > height > 0
        assert first.headers["cache-control"] == "no-cache"
        assert parsedate_to_datetime(first.headers["last-modified"]).tzinfo is not None
        etag = first.headers["etag"]
        for validator in (etag, f'"other", {etag}', "*"):
            again = await client.get(chart.url, headers={"If-None-Match": validator})
            assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag, validator
        assert (await client.get(chart.url, headers={"If-None-Match": '"something-else"'})).status_code == 200
        assert (tmp_path / chart.file).read_bytes() == first.content

        append(csv, metric_rows(200, 50, seed=2, spread=150.0))
        redrawn = await served(client, chart.url, unlike=etag)
        assert (await client.get(chart.url, headers={"If-None-Match": etag})).status_code == 200
        assert (tmp_path / chart.file).read_bytes() == redrawn.content

    in_process(create_app(settings(tmp_path)), scenario)


def test_the_charts_users_know_keep_their_urls_and_files(tmp_path: Path) -> None:
    known = {  # url: file under LOGS_DIR
        "/plot/latest.png": "error_distribution.png",  # the CONTRACT's
        "/plot/error_over_time.png": "error_over_time.png",
        "/plot/pred_vs_true.png": "pred_vs_true.png",
    }
    append(tmp_path / METRIC_LOG, metric_rows(0, 50, seed=3))

    async def scenario(client: AsyncClient) -> dict[str, bytes]:
        return {url: (await served(client, url)).content for url in known}

    served_now = in_process(create_app(settings(tmp_path)), scenario)
    assert {url: (tmp_path / file).read_bytes() for url, file in known.items()} == served_now


def test_an_unknown_chart_is_a_404_naming_the_charts_there_are(tmp_path: Path) -> None:
    async def scenario(client: AsyncClient) -> Response:
        return await client.get("/plot/nonesuch.png")

    answer = in_process(create_app(settings(tmp_path)), scenario)
    assert answer.status_code == 404
    detail = answer.json()["detail"]
    assert "/plot/nonesuch.png" in detail
    assert all(chart.url in detail and name in detail for name, chart in CHARTS.items())


def test_the_dashboard_has_a_figure_for_every_chart(tmp_path: Path) -> None:
    async def scenario(client: AsyncClient) -> Response:
        return await client.get("/")

    page = in_process(create_app(settings(tmp_path)), scenario)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name, chart in CHARTS.items():
        assert f'<img id="{name}" data-src="{chart.url.lstrip("/")}"' in page.text
    assert page.text.count("<img ") == len(CHARTS)
    assert "{{" not in page.text and f"Math.max({int(INTERVAL_S * 1000)}, 1000)" in page.text


def test_the_openapi_docs_list_the_charts(tmp_path: Path) -> None:
    async def scenario(client: AsyncClient) -> dict:
        return (await client.get("/openapi.json")).json()

    operation, images = chart_route_docs(in_process(create_app(settings(tmp_path)), scenario))
    assert images == [chart.url.removeprefix("/plot/") for chart in CHARTS.values()]
    for chart in CHARTS.values():
        assert f"`{chart.url}`" in operation["description"] and chart.file in operation["description"]


def draw_row_count(_figure: None, rows: AllRows) -> bytes:
    """A chart added by a test: the number of rows as one bar, on a fresh figure each time."""
    figure = Figure(figsize=(4, 2))
    FigureCanvasAgg(figure)
    figure.add_subplot().bar(["rows"], [rows.distribution.count])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def distribution_of(count: int) -> ErrorDistribution:
    distribution = ErrorDistribution()
    distribution.add(np.ones(count))
    return distribution


def test_adding_a_chart_is_one_function_and_one_registry_entry(tmp_path: Path) -> None:
    row_count = ChartSpec(
        name="row_count",
        url="/plot/row_count.png",
        file="row_count.png",
        window=Window.ALL,
        caption="the number of rows",
        draw=draw_row_count,
    )
    append(tmp_path / METRIC_LOG, metric_rows(0, 30, seed=4))

    async def scenario(client: AsyncClient) -> None:
        answer = await served(client, row_count.url)  # drawn by the refresh, served by the one route
        assert answer.content == draw_row_count(None, AllRows(distribution_of(30), stamp=""))
        assert (await client.get(row_count.url, headers={"If-None-Match": answer.headers["etag"]})).status_code == 304
        assert (tmp_path / "row_count.png").read_bytes() == answer.content
        assert '<img id="row_count" data-src="plot/row_count.png"' in (await client.get("/")).text
        assert "row_count.png" in chart_route_docs((await client.get("/openapi.json")).json())[1]
        families = {f.name: f for f in text_string_to_metric_families((await client.get("/metrics")).text)}
        counts = [s.labels for s in families["plot_chart_render_seconds"].samples if s.name.endswith("_count")]
        assert {"chart": "row_count"} in counts
        for chart in LOG_CHARTS.values():  # the registry's own charts are still there
            assert (await served(client, chart.url)).content.startswith(PNG_SIGNATURE)

    in_process(create_app(settings(tmp_path), registry(*CHARTS.values(), row_count)), scenario)


def test_the_drift_chart_and_api_drift_follow_model_apis_report(tmp_path: Path) -> None:
    """With a stand-in model_api: no metric log at all (the labels are late), yet the drift chart is
    drawn, written and served, redrawn when the report changes, and /api/drift relays the report."""
    from tests.json_stub import JsonStub
    from tests.unit.plot_api.test_charts import drift_report

    chart = CHARTS["drift"]
    with JsonStub("/drift", drift_report(0.0)) as model_api:

        async def scenario(client: AsyncClient) -> None:
            first = await served(client, chart.url)
            assert (tmp_path / chart.file).read_bytes() == first.content
            assert (await client.get("/api/drift")).json() == drift_report(0.0)
            await asyncio.sleep(4 * INTERVAL_S)  # the same report: not drawn again
            assert (await client.get(chart.url)).headers["etag"] == first.headers["etag"]
            model_api.body = drift_report(1.5)
            redrawn = await served(client, chart.url, unlike=first.headers["etag"])
            assert (tmp_path / chart.file).read_bytes() == redrawn.content
            assert (await client.get("/api/drift")).json()["drifted"]
            model_api.status = 500
            relayed = await client.get("/api/drift")
            assert relayed.status_code == 502 and model_api.url.removesuffix("/drift") in relayed.json()["detail"]
            assert (await client.get(chart.url)).status_code == 200  # the last picture stays, stamped with its time

        app_settings = settings(tmp_path).model_copy(update={"MODEL_API_URL": f"http://127.0.0.1:{model_api.port}"})
        in_process(create_app(app_settings), scenario)
    assert not (tmp_path / METRIC_LOG).exists()


def test_api_summary_relays_metric_apis_summary_and_refuses_what_is_not_one(tmp_path: Path) -> None:
    """With a stand-in metric_api answering a summary made by metric_api's own monitor: relayed as it
    is; then a summary with a field renamed (``mae`` as ``MAE``): a 502 naming the field, not a
    dashboard reading a key that is no longer there."""
    from tests.json_stub import JsonStub
    from tests.unit.plot_api.test_merged_summary import shard_summary

    summary = shard_summary(metric_rows(0, 20, seed=6), 150.0).model_dump(mode="json")
    renamed = {("MAE" if key == "mae" else key): value for key, value in summary.items()}
    with JsonStub("/metrics/summary", summary) as metric_api:

        async def scenario(client: AsyncClient) -> list[Response]:
            relayed = await client.get("/api/summary")
            metric_api.body = renamed
            return [relayed, await client.get("/api/summary")]

        app_settings = settings(tmp_path).model_copy(update={"METRIC_API_URL": f"http://127.0.0.1:{metric_api.port}"})
        relayed, refused = in_process(create_app(app_settings), scenario)
    assert relayed.status_code == 200 and relayed.json() == summary
    assert refused.status_code == 502 and "no summary plot_api can read" in refused.json()["detail"]
    assert "mae: Field required" in refused.json()["detail"]
