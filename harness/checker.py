"""Compare the ids that were published with the rows of metric_log.csv.

The categories of the jepsen/RabbitMQ queue checker: ``lost`` (published, no row),
``duplicated`` (more than one row), ``unexpected`` (a row for an id never published).
"""

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Verdict:
    published: int
    rows: int
    lost: int
    duplicated: int
    unexpected: int

    @property
    def exact(self) -> bool:
        return self.lost == self.duplicated == self.unexpected == 0


def check(published: list[str], csv: Path) -> Verdict:
    ids = pd.read_csv(csv, dtype={"id": str})["id"].tolist() if csv.exists() else []
    counts = Counter(ids)
    expected = set(published)
    return Verdict(
        published=len(expected),
        rows=len(ids),
        lost=len(expected - counts.keys()),
        duplicated=sum(n - 1 for n in counts.values() if n > 1),
        unexpected=len(counts.keys() - expected),
    )
