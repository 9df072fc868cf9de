"""The segments in Prometheus, computed at scrape time from metric_api's summary (cached for a
second, as the model_mae gauges are).

Bounded labels: ``key`` (of SEGMENT_KEYS) × ``value`` (at most SEGMENT_VALUES_MAX tracked, and
``(other)``) × ``window`` (all, last_100, last_1000). The buckets by prediction time are not
exported (a label per hour would grow without end): GET /metrics/by-time serves them.
"""

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class SegmentCollector(Collector):
    def __init__(self) -> None:
        self.summary: Callable[[float], dict[str, Any]] | None = None  # the core's summary (QualityMonitor.core_summary)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["key", "value", "window"]
        mae = GaugeMetricFamily("model_segment_mae", "Mean absolute error per segment (SEGMENT_KEYS) and window", labels=labels)
        rmse = GaugeMetricFamily("model_segment_rmse", "Root mean squared error per segment and window", labels=labels)
        rows = GaugeMetricFamily("model_segment_rows", "Rows per segment and window", labels=labels)
        low = GaugeMetricFamily(
            "model_segment_mae_low", "Lower 95% bound of a segment's last_1000 MAE (its dashboard rank)", labels=["key", "value"]
        )
        segments = self.summary(time.time()).get("segments", {}) if self.summary else {}
        for key, book in segments.items():
            for value, segment in book["values"].items():
                for window, stats in segment["windows"].items():
                    rows.add_metric([key, value, window], stats["count"])
                    if stats["mae"] is not None:
                        mae.add_metric([key, value, window], stats["mae"])
                        rmse.add_metric([key, value, window], stats["rmse"])
                if segment["mae_low"] is not None:
                    low.add_metric([key, value], segment["mae_low"])
        yield from (mae, rmse, rows, low)


SEGMENTS = SegmentCollector()
REGISTRY.register(SEGMENTS)
