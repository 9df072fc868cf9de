"""The drift chart over any schema, drawn from reports made by model_api's own drift core
(services.model_api.drift.DriftMonitor) and parsed as plot_api parses them (``DriftReport``), so that
a key renamed there breaks a test here."""

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.image
import numpy as np
import pytest

from services.common.contracts.drift import DRIFT_REPORT, CategoricalBins, CategoricalColumn, DriftReport, NumericColumn
from services.common.reference import ReferenceTable
from services.common.schema import FeatureSchema, FeatureSpec
from services.model_api.drift import DriftMonitor, Reference
from services.model_api.drift_watch import REFUSAL_KINDS, DataQuality
from services.plot_api.drift_chart import (
    CATEGORY_BARS,
    NO_P,
    PANELS,
    DriftChart,
    category_bars,
    chosen_columns,
    closeness,
    columns_of,
    describe,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOW = 1_700_000_000.0
CITIES = ("Lyon", "Paris", "Nice", "Lille", "Nantes", "Rennes", "Brest", "Dijon", "Metz", "Nancy")
CITY_SHARES = np.array([0.3, 0.2, 0.12, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03, 0.02])


def mixed_schema(features: int) -> FeatureSchema:
    """``features`` features, every third one categorical (the second of each three)."""
    return FeatureSchema(
        tuple(
            FeatureSpec(f"city_{i:03d}", "categorical", CITIES) if i % 3 == 1 else FeatureSpec(f"size_{i:03d}", "numeric")
            for i in range(features)
        )
    )


def column(spec: FeatureSpec, rng: np.random.Generator, rows: int, shifted: bool) -> np.ndarray:
    """A numeric column ~ N(100, 10) (1.5 std higher when shifted), a categorical one drawn with
    CITY_SHARES (reversed, and a fifth of it cities the reference never showed, when shifted)."""
    if spec.numeric:
        return rng.normal(115.0 if shifted else 100.0, 10.0, rows)
    values = rng.choice(CITIES, size=rows, p=CITY_SHARES[::-1] if shifted else CITY_SHARES).astype(object)
    if shifted:
        values[rng.random(rows) < 0.2] = "Bordeaux"
    return values


def with_missing(values: np.ndarray, spec: FeatureSpec, part: float) -> np.ndarray:
    """The values, the first ``part`` of them missing."""
    values[: round(part * len(values))] = np.nan if spec.numeric else None
    return values


def drift_report(
    schema: FeatureSchema,
    shifted: Sequence[str] = (),
    count: int = 300,
    seed: int = 0,
    missing: Mapping[str, float] | None = None,
    reference_missing: Mapping[str, float] | None = None,
    refused: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, Any]:
    """``GET /drift``'s report of a window of ``count`` samples, the ``shifted`` columns ("prediction"
    among them maybe) drawn otherwise than the reference and ``missing[name]`` of a feature's values
    sent as null (``reference_missing[name]`` of them in the reference): DriftMonitor's assessment,
    with what model_api's DriftWatch adds (the model version, the data quality as its DataQuality
    counts it, the refusals by path and kind)."""
    rng = np.random.default_rng(seed)
    rows = 2000
    table = ReferenceTable(
        schema,
        tuple(
            with_missing(column(spec, rng, rows, shifted=False), spec, (reference_missing or {}).get(spec.name, 0.0))
            for spec in schema.features
        ),
        rng.normal(0.0, 1.0, rows),
        rng.normal(0.0, 1.0, rows),
        "reference.parquet",
    )
    monitor = DriftMonitor(Reference.from_table(table), schema, size=count, max_age_s=3600.0)
    window = [
        with_missing(column(spec, rng, count, shifted=spec.name in shifted), spec, (missing or {}).get(spec.name, 0.0))
        for spec in schema.features
    ]
    predictions = rng.normal(1.5 if "prediction" in shifted else 0.0, 1.0, count)
    encoded = schema.encode_columns([values.tolist() for values in window])
    monitor.observe(encoded, predictions, NOW)
    return watched(monitor.assess(NOW), schema, encoded, refused)


def watched(
    assessment: dict[str, Any],
    schema: FeatureSchema,
    encoded: np.ndarray | None = None,
    refused: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, Any]:
    """What model_api's DriftWatch adds to DriftMonitor's assessment: the model version, the data
    quality as its DataQuality counts it (of the ``encoded`` rows), the refusals by path and kind."""
    quality = DataQuality(schema)
    if encoded is not None:
        quality.count(encoded)
    tally = {path: {kind: (refused or {}).get(path, {}).get(kind, 0) for kind in REFUSAL_KINDS} for path in ("queue", "http")}
    return {
        **assessment,
        "model_version": "abc123def456",
        "refused": {**tally, "since": NOW - 3600.0},
        "quality": quality.to_json(),
    }


def unavailable_report(schema: FeatureSchema) -> DriftReport:
    monitor = DriftMonitor(None, schema, 300, 3600.0, unavailable="the model has no reference file: run register")
    return DRIFT_REPORT.validate_python(watched(monitor.assess(NOW), schema))


def parsed(report: dict[str, Any]) -> DriftReport:
    """The report as plot_api reads it."""
    return DRIFT_REPORT.validate_python(report)


def titles(chart: DriftChart) -> list[str]:
    """The titles of the panels shown, in order (the key excluded)."""
    return [panel.get_title() for panel in chart.panels[:-1] if panel.get_visible()]


def tick_labels(chart: DriftChart, i: int) -> list[str]:
    return [label.get_text() for label in chart.panels[i].get_xticklabels()]


def is_png(picture: bytes) -> bool:
    height, width = matplotlib.image.imread(io.BytesIO(picture), format="png").shape[:2]
    return picture.startswith(PNG_SIGNATURE) and width > height > 0


@pytest.fixture(scope="module")
def mixed() -> DriftReport:
    """size_000 calm, city_001 shifted, size_002 all missing in the window."""
    return parsed(drift_report(mixed_schema(3), shifted=["city_001"], missing={"size_002": 1.0}))


@pytest.fixture(scope="module")
def wide() -> DriftReport:
    """200 features, four of them shifted (one categorical), and the prediction."""
    return parsed(drift_report(mixed_schema(200), shifted=["size_030", "city_121", "size_150", "size_198", "prediction"], seed=1))


def test_a_mixed_schema_is_drawn_column_by_column_by_kind_with_the_drifted_first(mixed: DriftReport) -> None:
    assert set(mixed.drifted) == {"city_001", "size_002"}, mixed.drifted
    chart = DriftChart()
    assert is_png(chart.render(mixed, "n = 300 samples"))
    shown = titles(chart)
    assert [title.split("\n")[0] for title in shown] == [
        "city_001 — drifted",
        "size_002 — drifted",
        "size_000",
        "prediction",
    ]
    assert shown[0].split("\n")[1].startswith("χ² p ")  # a categorical column's test
    assert shown[1].split("\n")[1] == "missing 100 % (ref. 0 %)"  # decided by its missing share
    assert shown[2].split("\n")[1].startswith("KS p ") and "PSI" in shown[2]
    assert [p.get_visible() for p in chart.panels] == [True] * 4 + [False] * (PANELS - 4) + [True]  # and the key
    # The categorical panel: the five categories largest in the reference or the window (reversed there),
    # in the schema's order, the other five pooled, then the cities never seen; no missing bar (none missing).
    assert tick_labels(chart, 0) == ["Lyon", "Paris", "Nice", "Metz", "Nancy", "+5", "unseen"]
    assert tick_labels(chart, 2) == []  # a numeric panel: the reference's deciles, unlabelled
    numeric = chart.bars[2]
    size = mixed.features["size_000"]
    assert numeric is not None and isinstance(size, NumericColumn) and len(numeric[0]) == len(size.bins.reference) == 10
    assert chart.headline.get_text() == "Drift: city_001, size_002"
    assert "and" not in chart.key_text.get_text()  # every column is drawn


def test_two_hundred_columns_are_capped_drifted_first_then_closest_and_the_rest_counted(wide: DriftReport) -> None:
    drifted = {"size_030", "city_121", "size_150", "size_198", "prediction"}
    assert set(wide.drifted) == drifted, wide.drifted
    chosen, more = chosen_columns(wide)
    assert len(chosen) == PANELS and more == 201 - PANELS
    assert {name for name, _ in chosen[:5]} == drifted
    calm = [closeness(c) for _, c in chosen[5:]]
    assert calm == sorted(calm)  # the closest to drifting next
    left_out = [c for name, c in columns_of(wide) if name not in {n for n, _ in chosen}]
    assert max(calm) <= min(closeness(c) for c in left_out)

    chart = DriftChart()
    assert is_png(chart.render(wide, "n = 300 samples"))
    shown = [title.split("\n")[0] for title in titles(chart)]
    assert len(shown) == PANELS and all(title.endswith(" — drifted") for title in shown[:5])
    rule = re.match(r"drifted when a test's p ≤ ([0-9.e+-]+)\n", chart.key_text.get_text())
    assert rule and wide.rule is not None and float(rule[1]) == pytest.approx(wide.rule.threshold, rel=0.01)
    assert "and 190 more calm columns (see /drift)" in chart.key_text.get_text().replace("\n", " ")
    assert "smallest p" in chart.key_text.get_text()  # says how the others were chosen
    assert chart.headline.get_text().startswith("Drift: ") and "and 1 more" in chart.headline.get_text()


def test_more_drifted_columns_than_panels_are_counted_in_the_key() -> None:
    schema = mixed_schema(40)
    report = parsed(drift_report(schema, shifted=[s.name for s in schema.features if s.numeric], seed=2))
    assert len(report.drifted) > PANELS
    chart = DriftChart()
    chart.render(report)
    assert all(title.split("\n")[0].endswith(" — drifted") for title in titles(chart))
    key = chart.key_text.get_text().replace("\n", " ")
    assert f"and {41 - PANELS} more columns, {len(report.drifted) - PANELS} drifted (see /drift)" in key


def test_an_unavailable_report_draws_the_reason_and_no_panel() -> None:
    chart = DriftChart()
    assert is_png(chart.render(unavailable_report(mixed_schema(3))))
    assert not any(panel.get_visible() for panel in chart.panels)
    assert chart.headline.get_text() == "Drift: unavailable for this model"
    assert "run register" in chart.message.get_text()


def test_a_collecting_window_is_drawn_but_not_judged() -> None:
    report = parsed(drift_report(mixed_schema(3), shifted=["city_001"], count=10))
    assert report.status == "collecting" and report.drifted == []
    chart = DriftChart()
    assert is_png(chart.render(report))
    assert not any("drifted" in title for title in titles(chart))
    assert chart.key_text.get_text().startswith("judged from 30 samples on")


def test_the_figure_is_reused_and_a_panels_bars_rebuilt_only_when_their_number_changes(
    mixed: DriftReport, wide: DriftReport
) -> None:
    chart = DriftChart()
    first = chart.render(wide)
    bars = list(chart.bars)
    again = parsed(
        drift_report(mixed_schema(200), shifted=["size_030", "city_121", "size_150", "size_198", "prediction"], seed=5)
    )
    assert chart.render(again) != first
    kept = [i for i, (a, b) in enumerate(zip(bars, chart.bars, strict=True)) if a is b]
    assert kept, "no panel kept its bars though most columns have the same ten bins in both"
    chart.render(mixed)
    chart.render(unavailable_report(mixed_schema(3)))
    assert chart.render(wide) == first  # nothing left behind by the other reports


def test_a_categorical_panel_pools_the_least_frequent_categories() -> None:
    labels = [f"category-{i}" for i in range(30)] + ["(other)", "(missing)"]
    reference = [100 - 3 * i for i in range(30)] + [5, 0]
    current = [0] * 29 + [400, 7, 3]
    drawn = category_bars(CategoricalBins(labels=labels, reference=reference, current=current))
    assert drawn is not None
    names, ref, cur = drawn
    assert names == ["categ…", "categ…", "categ…", "categ…", "categ…", "+25", "other", "n/a"]
    assert len(names) == CATEGORY_BARS + 2
    assert ref.sum() == pytest.approx(1.0) and cur.sum() == pytest.approx(1.0)
    assert cur[4] == pytest.approx(400 / 410)  # the window's one category kept, though the reference's rarest


def test_closeness_is_the_smallest_deciding_p_value(mixed: DriftReport) -> None:
    size, city = mixed.features["size_000"], mixed.features["city_001"]
    assert isinstance(size, NumericColumn) and isinstance(city, CategoricalColumn)
    assert closeness(size.model_copy(update={"ks_p": 0.2, "missing_p": 0.5})) == 0.2
    assert closeness(city.model_copy(update={"chi2_p": 0.2, "missing_p": 0.01, "unseen_p": 0.5})) == 0.01
    assert closeness(city.model_copy(update={"chi2_p": 0.2, "missing_p": 0.01, "unseen_p": 0.003})) == 0.003
    assert closeness(size.model_copy(update={"ks_p": None, "missing_p": None})) == NO_P
    assert describe(size.model_copy(update={"ks_p": None, "missing_share": None, "decided_by": None})) == "no samples"
