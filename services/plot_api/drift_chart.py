"""Drawing model_api's drift report (``GET /drift``, parsed as services/common/contracts/drift.py's
``DriftReport``) to PNG bytes. No I/O: a report in, bytes out.

Small multiples, one panel per column, for any schema: eleven panels and a key. A numeric column
(and the prediction) shows the share of the reference and of the window in each of the
reference's quantile bins — the very counts PSI and the Jensen–Shannon distance are computed
from: the reference's deciles hold about a tenth each, so the grey bars are flat, a window like
the reference is flat too, and a shifted one piles up at one end. A categorical column shows the
same shares per category (the schema's, most frequent first), then the values the reference never
showed and the missing ones. A drifted column is drawn and titled in red; its subtitle is the
p-value of its kind's test (KS, chi-square) and its PSI, or the share that decided (missing, unseen).

Which columns (``chosen_columns``): when they all fit, all of them, the drifted first, the others
in schema order (so a calm picture keeps its places). When the schema has more, the drifted first,
then those closest to drifting — the smallest p-value of the tests that decide (the kind's test,
the missing share's, a categorical column's unseen share's), the very number the rule compares
with its threshold — and the key
says how many more are left out (``GET /drift`` has them all). The dashboard orders its tiles by
the same rule (services/plot_api/dashboard.html, ``driftOrder``).
"""

import io
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from services.common.contracts.drift import (
    AssessedReport,
    CategoricalBins,
    CategoricalColumn,
    DriftReport,
    NumericColumn,
    UnjudgedColumn,
)
from services.plot_api.render import BLUE, DPI, FIGSIZE, GREY, PNG_OPTIONS, RED

LIGHT = "#C9CED6"
ROWS, COLS = 3, 4
PANELS = ROWS * COLS - 1  # the last cell of the grid holds the key
PREDICTION = "prediction"
NAMES_SHOWN = 4  # drifted columns the headline names before "and N more"
TITLE_CHARS = 24  # a panel's title: the column's name, shortened to this
LABEL_CHARS = 6  # a category's label under its bar, shortened to this
CATEGORY_BARS = 6  # the categories a panel draws, the rest pooled into one bar
# The bins a categorical column's report ends with (services/model_api/drift/reference.py), as a panel labels them.
SPECIAL_LABELS = {"(other)": "other", "(unseen)": "unseen", "(missing)": "n/a"}
NO_P = 2.0  # how close to drifting a column without a p-value is: after every column with one
ColumnReport = NumericColumn | CategoricalColumn | UnjudgedColumn


def shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(counts.shape)


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def columns_of(report: DriftReport) -> list[tuple[str, ColumnReport]]:
    """The report's columns in schema order: the features, then the prediction."""
    return [*report.features.items(), (PREDICTION, report.prediction)]


def closeness(column: ColumnReport) -> float:
    """How close a column is to drifting: the smallest p-value of the tests that decide it (its
    kind's test, KS or chi-square, and those of its missing share and, categorical, of its share of
    unseen values); NO_P when it has none yet."""
    if isinstance(column, CategoricalColumn):
        tests = [column.chi2_p, column.missing_p, column.unseen_p]
    elif isinstance(column, NumericColumn):
        tests = [column.ks_p, column.missing_p]
    else:
        tests = []
    return min((p for p in tests if p is not None), default=NO_P)


def chosen_columns(report: DriftReport, panels: int = PANELS) -> tuple[list[tuple[str, ColumnReport]], int]:
    """The columns drawn, in order, and how many are left out (see the module's docstring)."""
    columns = columns_of(report)
    if len(columns) <= panels:
        return [c for c in columns if c[1].drifted] + [c for c in columns if not c[1].drifted], 0
    order = sorted(range(len(columns)), key=lambda i: (not columns[i][1].drifted, closeness(columns[i][1]), i))
    return [columns[i] for i in order[:panels]], len(columns) - panels


def p_text(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-300 else "≈ 0"


def percent(share: float) -> str:
    return f"{100 * share:.0f} %" if share >= 0.01 or share == 0 else "< 1 %"


def describe(column: NumericColumn | CategoricalColumn) -> str:
    """The panel's subtitle: the p-value of the kind's test and the PSI; the missing (or unseen)
    share when that decided, or the missing share when it is all there is; or that there is nothing yet."""
    name, p = ("χ² p", column.chi2_p) if isinstance(column, CategoricalColumn) else ("KS p", column.ks_p)
    if column.decided_by == "missing" or (p is None and column.missing_share):
        return f"missing {percent(column.missing_share or 0.0)} (ref. {percent(column.reference_missing_share)})"
    if isinstance(column, CategoricalColumn) and column.decided_by == "unseen":
        return f"unseen {percent(column.unseen_share or 0.0)}" + (f" · χ² p {p_text(p)}" if p is not None else "")
    if p is None:
        return "no samples"
    return f"{name} {p_text(p)}" + (f" · PSI {column.psi:.2f}" if column.psi is not None else "")


def numeric_bars(reference_counts: Sequence[int], current_counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(reference shares, window shares) per bin, or None when the report has no bins."""
    if not reference_counts:
        return None
    reference, current = np.asarray(reference_counts, dtype=float), np.asarray(current_counts, dtype=float)
    if current.size != reference.size:
        current = np.zeros(reference.size)
    return shares(reference), shares(current)


def category_bars(bins: CategoricalBins) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(labels, reference shares, window shares) of a categorical column's bars: at most
    CATEGORY_BARS categories — those with the largest share in either, kept in the schema's order,
    the rest pooled into one bar — then the bins past the categories and the missing one, each
    only when it holds something."""
    drawn = numeric_bars(bins.reference, bins.current)
    if drawn is None or len(bins.labels) != drawn[0].size:
        return None
    reference, current = drawn
    names = bins.labels
    first_special = len(names)
    while first_special > 0 and names[first_special - 1] in SPECIAL_LABELS:
        first_special -= 1
    categories = np.arange(first_special)
    out_labels: list[str] = []
    out_reference: list[float] = []
    out_current: list[float] = []
    if categories.size > CATEGORY_BARS:
        largest = np.argsort(-np.maximum(reference[categories], current[categories]), kind="stable")[: CATEGORY_BARS - 1]
        kept = np.sort(largest)
        pooled = np.setdiff1d(categories, kept)
        for i in kept:
            out_labels.append(_short(names[i], LABEL_CHARS))
            out_reference.append(float(reference[i]))
            out_current.append(float(current[i]))
        out_labels.append(f"+{pooled.size}")
        out_reference.append(float(reference[pooled].sum()))
        out_current.append(float(current[pooled].sum()))
    else:
        for i in categories:
            out_labels.append(_short(names[i], LABEL_CHARS))
            out_reference.append(float(reference[i]))
            out_current.append(float(current[i]))
    for i in range(first_special, len(names)):
        if reference[i] > 0 or current[i] > 0:
            out_labels.append(SPECIAL_LABELS[names[i]])
            out_reference.append(float(reference[i]))
            out_current.append(float(current[i]))
    if not out_labels:
        return None
    return out_labels, np.asarray(out_reference), np.asarray(out_current)


class DriftChart:
    """The drift report as small multiples. The figure is built once; a panel's bars are built again
    only when its number of bars changes, else only their heights and colours change."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=FIGSIZE, dpi=DPI)
        FigureCanvasAgg(self.figure)
        grid = self.figure.add_gridspec(ROWS, COLS, left=0.02, right=0.98, bottom=0.05, top=0.79, hspace=0.85, wspace=0.12)
        self.panels: list[Axes] = [self.figure.add_subplot(grid[i // COLS, i % COLS]) for i in range(ROWS * COLS)]
        self.bars: list[tuple[BarContainer, BarContainer] | None] = [None] * len(self.panels)
        for panel in self.panels:
            panel.set_xticks([])
            panel.set_yticks([])
            panel.tick_params(axis="x", length=0, pad=1, labelsize=5, labelcolor=GREY)
            for side in ("top", "right", "left"):
                panel.spines[side].set_visible(False)
        self.headline = self.figure.text(0.5, 0.975, "", ha="center", va="top", fontsize=12)
        self.stamp = self.figure.text(0.5, 0.915, "", ha="center", va="top", fontsize=9, color=GREY)
        self.message = self.figure.text(0.5, 0.45, "", ha="center", va="center", fontsize=11, color=GREY)
        key = self.panels[-1]
        key.set_axis_off()
        handles = [Patch(color=LIGHT, label="reference"), Patch(color=BLUE, label="window"), Patch(color=RED, label="drifted")]
        key.legend(
            handles=handles,
            loc="lower left",  # above the cell, where a panel has its title
            bbox_to_anchor=(0.0, 1.05),
            ncols=3,
            fontsize=6.5,
            frameon=False,
            borderaxespad=0,
            handlelength=1.0,
            handletextpad=0.3,
            columnspacing=0.6,
        )
        self.key_text = key.text(0.0, 0.0, "", fontsize=6.5, color=GREY, transform=key.transAxes, va="bottom", linespacing=1.3)

    def render(self, report: DriftReport, stamp: str = "") -> bytes:
        chosen, more = chosen_columns(report)
        available = isinstance(report, AssessedReport)
        for i, panel in enumerate(self.panels):
            panel.set_visible(available and (i < len(chosen) or i == len(self.panels) - 1))
        drifted = report.drifted
        if isinstance(report, AssessedReport):
            for i, (name, column) in enumerate(chosen):
                self._panel(i, name, column)
            self.key_text.set_text(key_text(report, [name for name, _ in chosen], more))
            headline = f"Drift: {names_text(drifted)}" if drifted else "Drift: window against the training reference"
            self.message.set_text("")
        else:
            headline = "Drift: unavailable for this model"
            reason = report.reason or "the model has no drift reference"
            self.message.set_text("\n".join(textwrap.wrap(reason, 70)))
        self.headline.set_text(headline)
        self.headline.set_color(RED if drifted else "black")
        self.stamp.set_text(stamp)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", pil_kwargs=PNG_OPTIONS)
        return buffer.getvalue()

    def _panel(self, i: int, name: str, column: ColumnReport) -> None:
        panel = self.panels[i]
        labels: list[str] = []
        drawn: tuple[np.ndarray, np.ndarray] | None = None
        if isinstance(column, CategoricalColumn):
            categorical = category_bars(column.bins)
            drawn = None if categorical is None else (categorical[1], categorical[2])
            labels = [] if categorical is None else categorical[0]
        elif isinstance(column, NumericColumn):
            drawn = numeric_bars(column.bins.reference, column.bins.current)
        reference, current = drawn if drawn is not None else (np.zeros(0), np.zeros(0))
        bars = self.bars[i]
        if bars is None or len(bars[0]) != reference.size:
            if bars is not None:
                for container in bars:
                    container.remove()
            x = np.arange(reference.size)
            bars = (panel.bar(x, reference, width=0.9, color=LIGHT), panel.bar(x, current, width=0.45, color=BLUE))
            self.bars[i] = bars
            panel.set_xlim(-0.6, max(reference.size, 1) - 0.4)
        panel.set_xticks(np.arange(len(labels)), labels)
        drifted = column.drifted
        colour = RED if drifted else BLUE
        for rectangle, height in zip(bars[0], reference, strict=True):
            rectangle.set_height(height)
        for rectangle, height in zip(bars[1], current, strict=True):
            rectangle.set_height(height)
            rectangle.set_color(colour)
        panel.set_ylim(0, max(0.05, float(reference.max(initial=0.0)), float(current.max(initial=0.0))) * 1.1)
        title = f"{_short(name, TITLE_CHARS)}{' — drifted' if drifted else ''}"
        subtitle = describe(column) if drawn is not None and not isinstance(column, UnjudgedColumn) else "no bins in the report"
        panel.set_title(f"{title}\n{subtitle}", fontsize=8, color=RED if drifted else "black", pad=2)


def names_text(names: Sequence[str], shown: int = NAMES_SHOWN) -> str:
    """'a, b, c' — the first ``shown`` of them, then how many more."""
    listed = ", ".join(_short(name, TITLE_CHARS) for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def key_text(report: AssessedReport, drawn: Sequence[str], more: int) -> str:
    """The lines under the legend: the rule, what the bins are, and what is left out."""
    lines = [f"drifted when a test's p ≤ {report.rule.threshold:.3g}"]
    if report.status == "collecting":
        lines[0] = f"judged from {report.window.min_count} samples on"
    lines.append("bins: reference deciles / categories")
    if more:
        hidden = set(report.drifted) - set(drawn)
        judged = report.status in ("calm", "drifted")
        lines.append("shown: drifted, then smallest p")
        if hidden:
            lines.append(f"and {more} more columns, {len(hidden)} drifted")
        else:
            lines.append(f"and {more} more {'calm ' if judged else ''}columns")
        lines.append("(see /drift)")
    return "\n".join(lines)
