"""The window against a plain list."""

from collections import deque

import numpy as np

from services.model_api.drift import (
    SlidingWindow,
)

# -- the window


def test_the_window_holds_the_newest_rows_within_its_age_like_a_plain_list() -> None:
    rng = np.random.default_rng(5)
    window = SlidingWindow(size=7, max_age_s=10.0, width=2)
    model: deque[tuple[float, list[float]]] = deque()
    now = 0.0
    for step in range(300):
        now += float(rng.choice([0.5, 3.0, 12.0]))
        batch = rng.normal(size=(int(rng.integers(0, 12)), 2))
        window.add(batch, now)
        model.extend((now, row.tolist()) for row in batch)
        if step % 3 == 0:
            window.expire(now)
        while len(model) > 7 or (step % 3 == 0 and model and model[0][0] < now - 10.0):
            model.popleft()
        assert window.rows().tolist() == [row for _, row in model], step
        assert window.span() == ((model[0][0], model[-1][0]) if model else (None, None))
    assert window.nbytes == 7 * 2 * 8 + 7 * 8
