"""bench.fastpath's summary: each part's cost is the median of its per-round ratios to the all-on run
of the same round (a slow round does not count against a part), and the verdict is at 5 %."""

from typing import Any

from bench.fastpath import BASELINE, configurations, report, summarise
from services.common.amqp.fastpath import gate


def run(features: float, broker: float, slower: float = 1.0) -> dict[str, Any]:
    """One run's figures as bench.throughput gives them (CPU ms per sample by process), on a machine ``slower``."""
    cpu = {"features_api": features, "model_api": 0.2, "metric_api": 0.2, "plot_api": 0.0, "rabbitmq": broker}
    return {"samples_per_s": 1000.0 / slower, "cpu_ms_per_sample": {name: value * slower for name, value in cpu.items()}}


def test_the_cost_of_a_part_is_the_median_of_its_ratios_to_all_on_in_the_same_round() -> None:
    order = configurations()
    # Round 2 ran on a machine twice as slow: every figure doubled. Measured against the round's own all-on
    # run, publish off still costs +50 % there; against the median all-on it would look like +200 %.
    rounds: list[dict[str, dict[str, Any] | None]] = [
        {"all on": run(0.4, 0.2), "publish off": run(0.7, 0.4), "deliveries off": run(0.42, 0.2), "all off": run(0.8, 0.4)},
        {
            "all on": run(0.4, 0.2, 2),
            "publish off": run(0.7, 0.4, 2),
            "deliveries off": run(0.42, 0.2, 2),
            "all off": run(0.8, 0.4, 2),
        },
        {"all on": run(0.4, 0.2), "publish off": run(0.7, 0.4), "deliveries off": None, "all off": run(0.8, 0.4)},
    ]
    rows = {row["configuration"]: row for row in summarise(rounds, order)}

    assert rows["all on"]["cpu_ms_per_sample_total"] == 1.0  # 0.4 + 0.2 + 0.2 + 0.2 (the median round)
    assert rows["all on"]["cpu_ms_per_sample_services"] == 0.8
    assert rows["all on"]["off_costs_percent_total"] is None and rows["all on"]["verdict"] is None
    assert rows["publish off"]["off_costs_percent_total_by_round"] == [50.0, 50.0, 50.0]
    assert rows["publish off"]["off_costs_percent_total"] == 50.0
    assert rows["publish off"]["off_costs_percent_services"] == 37.5  # (1.1 - 0.8) / 0.8
    assert rows["publish off"]["verdict"] == "keep (≥ 5 %)"
    # +2 % in the two rounds it ran in; the round without it is left out, not counted as nothing
    assert rows["deliveries off"]["off_costs_percent_total_by_round"] == [2.0, 2.0]
    assert rows["deliveries off"]["rounds"] == 2 and rows["deliveries off"]["verdict"] == "remove (< 5 %)"
    assert rows["frames off"]["rounds"] == 0 and rows["frames off"]["verdict"] is None  # no run at all
    assert rows["all off"]["off_costs_percent_total"] == 60.0 and rows["all off"]["verdict"] is None  # not a part

    text = report({"settings": {"rounds": 3, "warmup": 1000, "samples": 20000}, "configurations": list(rows.values())})
    assert "| publish off | `publish` | 1.5 | 1.1 | 1,000 | 50 | 37.5 | +50.0, +50.0, +50.0 | keep (≥ 5 %) |" in text
    assert "| deliveries off | `deliveries` | " in text and "| remove (< 5 %) |" in text


def test_every_round_runs_all_on_first_then_each_part_off_alone_then_all_off() -> None:
    order = configurations()
    assert order[0] is BASELINE and BASELINE.off == ""
    assert [c.off for c in order[1:-1]] == [part.key for part in gate.PARTS]
    assert [c.part for c in order[1:-1]] == list(gate.PARTS)
    assert (order[-1].off, order[-1].part) == ("all", None)
    assert [c.off for c in configurations([gate.FAST_FRAMES, gate.BATCHED_PUBLISH])] == ["", "frames", "publish", "all"]
    assert [c.off for c in configurations([gate.FAST_FRAMES])] == ["", "frames"]  # all off would be the part off again
