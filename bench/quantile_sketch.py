"""What the bounded percentiles cost: python -m bench.quantile_sketch (about 30 s).

- adding a batch of 1,000 rows to a population (``ErrorHistory.add``): exact (as before: the |e| values
  appended) and sketched (past ALL_EXACT_ROWS: counted in the sketch's buckets);
- the sketch alone (``QuantileSketch.add`` of 1,000 values) beside the ``ddsketch`` package's, which
  adds one value at a time (measured only when it is installed: it is not a dependency);
- reading the window (``ErrorHistory.window``, after each batch, as the summary does);
- the bytes a population holds, exact at 1,000,000 rows and sketched at any number.
Prints one JSON document; the numbers are this machine's.
"""

import json
import timeit
from collections.abc import Callable

import numpy as np

from services.common.quantile_sketch import RELATIVE_ACCURACY, QuantileSketch
from services.common.row_windows import ErrorHistory

BATCH = 1000
ROWS = 1_000_000


def best_us(run: Callable[[], object], number: int = 200, repeat: int = 5) -> float:
    """The best of ``repeat`` timings of ``number`` calls, per call (µs)."""
    return 1e6 * min(timeit.repeat(run, number=number, repeat=repeat)) / number


def main() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.uniform(25, 350, BATCH)
    y_pred = y_true + rng.normal(0, 50, BATCH)
    errors = np.abs(y_pred - y_true)

    exact = ErrorHistory(None, exact_rows=10**12)
    sketched = ErrorHistory(None, exact_rows=BATCH)
    for _ in range(ROWS // BATCH):
        exact.add(y_true, y_pred)
        sketched.add(y_true, y_pred)
    held = {f"exact at {exact.count:,} rows (array capacity)": exact.nbytes(), "sketched (any number of rows)": sketched.nbytes()}
    results: dict[str, object] = {
        "batch_rows": BATCH,
        "add_batch_us": {
            "exact (before)": best_us(lambda: exact.add(y_true, y_pred)),
            "sketched": best_us(lambda: sketched.add(y_true, y_pred)),
        },
    }

    def add_then_read(history: ErrorHistory) -> Callable[[], object]:
        def run() -> object:
            history.add(y_true, y_pred)
            return history.window()

        return run

    results["add_batch_and_read_window_us"] = {
        "exact (before)": best_us(add_then_read(exact), number=20),
        "sketched": best_us(add_then_read(sketched), number=20),
    }
    sketch = QuantileSketch()
    sketch.add(errors)
    adds: dict[str, float] = {"QuantileSketch.add (numpy, a batch)": best_us(lambda: sketch.add(errors))}
    try:
        from ddsketch import DDSketch  # type: ignore[import-not-found]  # measured only when installed
    except ImportError:
        adds["ddsketch 3.0.1 (a value at a time)"] = float("nan")
    else:
        dd = DDSketch(RELATIVE_ACCURACY)
        values = errors.tolist()

        def add_each() -> None:
            for value in values:
                dd.add(value)

        adds["ddsketch 3.0.1 (a value at a time)"] = best_us(add_each, number=20)
    results["sketch_add_1000_values_us"] = adds
    results["bytes_per_population"] = held
    print(json.dumps(results, indent=2, allow_nan=True))


if __name__ == "__main__":
    main()
