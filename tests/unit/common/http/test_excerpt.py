"""excerpt: a bad input cut to what a 4xx may quote."""

import json
import math
from typing import Any

from services.common.http.excerpt import EXCERPT_CHARS, excerpt


def test_small_json_values_are_kept_as_they_are() -> None:
    values = [None, True, 3, 2.5, "abc", [1, "a"], {"k": [1]}]
    assert [excerpt(v) for v in values] == [None, True, 3, 2.5, "abc", [1, "a"], {"k": [1]}]


def test_what_json_cannot_carry_becomes_text() -> None:
    assert [excerpt(v) for v in (math.nan, math.inf, b"\xff\xfeab")] == ["NaN", "Infinity", "\ufffd\ufffdab"]
    assert excerpt(10**5000) == "an integer of about 5000 digits"
    json.dumps([excerpt(v) for v in (object(), {1: math.nan}, [math.inf] * 3)], allow_nan=False)


def test_long_or_deep_values_are_cut_to_a_short_text() -> None:
    assert excerpt("x" * 1000) == "x" * EXCERPT_CHARS + "…"
    assert excerpt(list(range(1000))).startswith("[0, 1, 2") and len(excerpt(list(range(1000)))) == EXCERPT_CHARS + 1
    deep: Any = 1
    for _ in range(10_000):
        deep = [deep]
    assert excerpt(deep).endswith("…") and len(excerpt(deep)) <= EXCERPT_CHARS + 1
