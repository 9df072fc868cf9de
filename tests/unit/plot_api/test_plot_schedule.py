"""Which charts a refresh redraws: the rule, on a small registry built here, and on the real one."""

import pytest

from services.plot_api.charts import CHARTS, LOG_WINDOWS, ChartSpec, Window, charts_to_draw


def chart(name: str, window: Window) -> ChartSpec:
    return ChartSpec(name=name, url=f"/plot/{name}.png", file=f"{name}.png", window=window, caption=name, draw=lambda _f, _r: b"")


# Shaped like today's registry, but the recent-rows charts listed against their alphabetical order.
EVERY, RECENT_B, RECENT_A = chart("every", Window.ALL), chart("recent_b", Window.RECENT), chart("recent_a", Window.RECENT)
SMALL = [RECENT_B, EVERY, RECENT_A]
# The registry's charts of the metric log (its drift chart is drawn when model_api's report changes).
LOG = [chart for chart in CHARTS.values() if chart.window in LOG_WINDOWS]


def refresh(charts: list[ChartSpec], drawn: dict[str, tuple[int, int]], changes: int, number: int) -> list[str]:
    """One refresh as PlotService does it: draw what the rule says, note what each was drawn from."""
    names = charts_to_draw(charts, drawn, changes)
    drawn |= dict.fromkeys(names, (changes, number))
    return names


def test_the_first_refresh_draws_every_chart_in_registry_order() -> None:
    assert charts_to_draw(SMALL, {}, changes=1) == ["recent_b", "every", "recent_a"]
    assert charts_to_draw(CHARTS.values(), {}, changes=1) == [chart.name for chart in LOG]


def test_nothing_new_draws_nothing() -> None:
    drawn = {"every": (4, 7), "recent_a": (4, 6), "recent_b": (4, 7)}
    assert charts_to_draw(SMALL, drawn, changes=4) == []
    assert charts_to_draw(CHARTS.values(), dict.fromkeys(CHARTS, (4, 7)), changes=4) == []
    assert charts_to_draw(CHARTS.values(), {}, changes=4) == [c.name for c in LOG]  # never a drift chart


def test_new_rows_draw_the_every_row_charts_and_the_recent_chart_drawn_longest_ago() -> None:
    drawn = {"every": (4, 7), "recent_a": (4, 7), "recent_b": (3, 6)}
    assert charts_to_draw(SMALL, drawn, changes=5) == ["recent_b", "every"]
    drawn = {"every": (4, 7), "recent_a": (3, 6), "recent_b": (4, 7)}
    assert charts_to_draw(SMALL, drawn, changes=5) == ["every", "recent_a"]
    drawn = {"every": (4, 7), "recent_a": (4, 7), "recent_b": (4, 7)}  # a tie: the first in the registry
    assert charts_to_draw(SMALL, drawn, changes=5) == ["recent_b", "every"]


def test_a_chart_never_drawn_is_drawn_at_once() -> None:
    drawn = {"every": (4, 7), "recent_b": (3, 6)}  # e.g. recent_a was just added to the registry
    assert charts_to_draw(SMALL, drawn, changes=4) == ["recent_a"]
    assert charts_to_draw([EVERY, RECENT_A], {"recent_a": (4, 7)}, changes=4) == ["every"]


@pytest.mark.parametrize("charts", [SMALL, LOG], ids=["small", "registry"])
def test_while_rows_come_the_recent_charts_take_turns_and_all_are_current_soon_after(charts: list[ChartSpec]) -> None:
    every = [c.name for c in charts if c.window is Window.ALL]
    recent = [c.name for c in charts if c.window is Window.RECENT]
    drawn: dict[str, tuple[int, int]] = {}
    assert refresh(charts, drawn, changes=1, number=1) == [c.name for c in charts]
    turns = []
    for number in range(2, 2 + 3 * len(recent)):  # rows keep coming: a new change count each refresh
        names = refresh(charts, drawn, changes=number, number=number)
        assert [n for n in names if n in every] == every and len(names) == len(every) + min(1, len(recent))
        turns += [n for n in names if n in recent]
    assert all(turns.count(name) == 3 for name in recent)  # each in turn, none left behind
    stopped = number  # the rows stop here: the charts left behind are drawn one a refresh, then nothing
    for extra in range(len(recent)):
        refresh(charts, drawn, changes=stopped, number=stopped + 1 + extra)
    assert all(drawn[c.name][0] == stopped for c in charts)
    assert charts_to_draw(charts, drawn, changes=stopped) == []
