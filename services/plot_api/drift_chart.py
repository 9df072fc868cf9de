"""Drawing model_api's drift report (``GET /drift``) to PNG bytes. No I/O: a report in, bytes out.

One small panel per column (the ten features, then the prediction): the share of the reference
and of the window in each of the reference's quantile bins — the very counts PSI and the
Jensen–Shannon distance are computed from. The reference's deciles hold about a tenth each, so
the grey bars are flat; a window like the reference is flat too, and a shifted one piles up at
one end. A drifted column is drawn and titled in red.
"""

import io
import textwrap
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from services.plot_api.render import BLUE, DPI, FIGSIZE, GREY, PNG_OPTIONS, RED

LIGHT = "#C9CED6"
ROWS, COLS = 3, 4


def shares(counts: list[int]) -> np.ndarray:
    values = np.asarray(counts, dtype=float)
    total = values.sum()
    return values / total if total else values


def describe(column: dict[str, Any]) -> str:
    """The panel's subtitle: the decisive p-value and the PSI, or that there is nothing yet."""
    if column.get("ks_p") is None:
        return "no samples"
    psi = column.get("psi")
    return f"p {column['ks_p']:.2g} · PSI {psi:.2f}" if psi is not None else f"p {column['ks_p']:.2g}"


class DriftChart:
    """The drift report as small multiples. The figure is built once; a panel's bars are built again
    only when its number of bins changes (another model), else only their heights and colours change."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=FIGSIZE, dpi=DPI)
        FigureCanvasAgg(self.figure)
        grid = self.figure.add_gridspec(ROWS, COLS, left=0.02, right=0.98, bottom=0.03, top=0.79, hspace=0.75, wspace=0.12)
        self.panels: list[Axes] = [self.figure.add_subplot(grid[i // COLS, i % COLS]) for i in range(ROWS * COLS)]
        self.bars: list[tuple[BarContainer, BarContainer] | None] = [None] * len(self.panels)
        for panel in self.panels:
            panel.set_xticks([])
            panel.set_yticks([])
            for side in ("top", "right", "left"):
                panel.spines[side].set_visible(False)
        self.headline = self.figure.text(0.5, 0.975, "", ha="center", va="top", fontsize=12)
        self.stamp = self.figure.text(0.5, 0.915, "", ha="center", va="top", fontsize=9, color=GREY)
        self.message = self.figure.text(0.5, 0.45, "", ha="center", va="center", fontsize=11, color=GREY)
        key = self.panels[-1]
        key.set_axis_off()
        handles = [Patch(color=LIGHT, label="reference"), Patch(color=BLUE, label="window"), Patch(color=RED, label="drifted")]
        key.legend(
            handles=handles, loc="upper left", fontsize=7, frameon=False, borderaxespad=0, handlelength=1.2, labelspacing=0.3
        )
        self.key_text = key.text(0.0, 0.0, "", fontsize=7, color=GREY, transform=key.transAxes, va="bottom")

    def render(self, report: dict[str, Any], stamp: str = "") -> bytes:
        columns = {**report.get("features", {}), "prediction": report.get("prediction", {})}
        available = report.get("status") != "unavailable" and all("bins" in column for column in columns.values())
        for i, panel in enumerate(self.panels):
            panel.set_visible(available and (i < len(columns) or i == len(self.panels) - 1))
        if available:
            for i, (name, column) in enumerate(columns.items()):
                self._panel(i, name, column)
            self.key_text.set_text(key_text(report))
            drifted = report.get("drifted") or []
            headline = f"Drift: {', '.join(drifted)}" if drifted else "Drift: window against the training reference"
            self.message.set_text("")
        else:
            headline = "Drift: unavailable for this model"
            self.message.set_text("\n".join(textwrap.wrap(report.get("reason") or "the model has no drift reference", 70)))
        self.headline.set_text(headline)
        self.headline.set_color(RED if report.get("drifted") else "black")
        self.stamp.set_text(stamp)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", pil_kwargs=PNG_OPTIONS)
        return buffer.getvalue()

    def _panel(self, i: int, name: str, column: dict[str, Any]) -> None:
        panel = self.panels[i]
        bins = column["bins"]
        reference, current = shares(bins["reference"]), shares(bins["current"])
        bars = self.bars[i]
        if bars is None or len(bars[0]) != reference.size:
            if bars is not None:
                for container in bars:
                    container.remove()
            x = np.arange(reference.size)
            bars = (panel.bar(x, reference, width=0.9, color=LIGHT), panel.bar(x, current, width=0.45, color=BLUE))
            self.bars[i] = bars
            panel.set_xlim(-0.6, reference.size - 0.4)
        drifted = bool(column.get("drifted"))
        colour = RED if drifted else BLUE
        for rectangle, height in zip(bars[0], reference, strict=True):
            rectangle.set_height(height)
        for rectangle, height in zip(bars[1], current, strict=True):
            rectangle.set_height(height)
            rectangle.set_color(colour)
        panel.set_ylim(0, max(0.05, float(reference.max()), float(current.max(initial=0.0))) * 1.1)
        title = f"{name}{' — drifted' if drifted else ''}"
        panel.set_title(f"{title}\n{describe(column)}", fontsize=8, color=RED if drifted else "black", pad=2)


def key_text(report: dict[str, Any]) -> str:
    window, rule = report.get("window", {}), report.get("rule") or {}
    threshold = f"p ≤ {rule['threshold']:.2g}" if rule.get("decides") == "ks" else f"W / std ≥ {rule.get('threshold', 0):g}"
    lines = [f"drifted when {rule.get('decides', '?').upper()} {threshold}", "bins: the reference's deciles"]
    if report.get("status") == "collecting":
        lines[0] = f"judged from {window.get('min_count', '?')} samples on"
    return "\n".join(lines)
