"""Running error statistics over the metric rows. No I/O."""

import math
from collections import deque
from collections.abc import Iterable

from services.metric_api.join import MetricRow

RECENT_ROWS = 1000


class RunningErrorStats:
    """Count, MAE and RMSE over every row seen, in constant memory, plus the last rows."""

    def __init__(self, rows: Iterable[MetricRow] = ()) -> None:
        self.count = 0
        self._sum_ae = 0.0
        self._sum_se = 0.0
        self.last_id: str | None = None
        self.recent: deque[MetricRow] = deque(maxlen=RECENT_ROWS)
        for row in rows:
            self.add(row)

    def add(self, row: MetricRow) -> None:
        self.count += 1
        self._sum_ae += row.absolute_error
        self._sum_se += row.absolute_error**2
        self.last_id = row.id
        self.recent.append(row)

    @property
    def mae(self) -> float | None:
        return self._sum_ae / self.count if self.count else None

    @property
    def rmse(self) -> float | None:
        return math.sqrt(self._sum_se / self.count) if self.count else None

    def last(self, limit: int) -> list[MetricRow]:
        """The newest ``limit`` rows, oldest first."""
        if limit <= 0:
            return []
        return list(self.recent)[-limit:]
