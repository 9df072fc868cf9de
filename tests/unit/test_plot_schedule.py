from services.plot_api.app import charts_to_draw


def test_the_first_refresh_draws_all_three() -> None:
    assert charts_to_draw({}, changes=1) == ["histogram", "error_over_time", "pred_vs_true"]


def test_nothing_new_draws_nothing() -> None:
    drawn = {"histogram": (4, 7), "error_over_time": (4, 6), "pred_vs_true": (4, 7)}
    assert charts_to_draw(drawn, changes=4) == []


def test_new_rows_draw_the_histogram_and_the_recent_chart_drawn_longest_ago() -> None:
    drawn = {"histogram": (4, 7), "error_over_time": (4, 7), "pred_vs_true": (3, 6)}
    assert charts_to_draw(drawn, changes=5) == ["histogram", "pred_vs_true"]
    drawn = {"histogram": (4, 7), "error_over_time": (3, 6), "pred_vs_true": (4, 7)}
    assert charts_to_draw(drawn, changes=5) == ["histogram", "error_over_time"]


def test_once_rows_stop_every_chart_is_current_within_two_refreshes() -> None:
    drawn = {"histogram": (1, 1), "error_over_time": (1, 1), "pred_vs_true": (1, 1)}
    for refresh in range(2, 6):  # rows keep coming: the two recent charts take turns
        names = charts_to_draw(drawn, changes=refresh)
        assert names[0] == "histogram" and len(names) == 2
        drawn |= {name: (refresh, refresh) for name in names}
    # The rows stop at change 5: the chart left behind is drawn next, alone, then nothing.
    behind = charts_to_draw(drawn, changes=5)
    assert len(behind) == 1 and behind[0] in ("error_over_time", "pred_vs_true")
    drawn |= {behind[0]: (5, 6)}
    assert charts_to_draw(drawn, changes=5) == []
