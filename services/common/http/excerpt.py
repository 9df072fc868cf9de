"""A bad input cut to what a 4xx may quote: never the whole 10 MB body back, never a value
(bytes, NaN, a 5,000-digit integer, deep nesting) that JSON cannot carry or that takes long to write."""

import json
import math
from collections.abc import Iterator
from typing import Any

# A 4xx quotes at most this many characters of a bad input.
EXCERPT_CHARS = 120
# Deeper than this, a structure is quoted as "…".
EXCERPT_DEPTH = 8


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> Any:
    """A bad input as a 4xx may quote it: small JSON values as they are, anything else (a large or
    deep structure, bytes, NaN, an object) as at most ``limit`` characters of text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**15 else cut(_scalar_text(value), limit)
    if isinstance(value, float):
        return value if math.isfinite(value) else _scalar_text(value)
    if isinstance(value, str):
        return cut(value, limit)
    if isinstance(value, list | tuple | dict):
        text, whole = _bounded_json(value, limit)
        return _plain(value) if whole else text
    return cut(_scalar_text(value), limit)


def cut(text: str, limit: int) -> str:
    """At most ``limit`` characters of ``text``, and "…" when that is not all of it."""
    return text if len(text) <= limit else text[:limit] + "…"


def _scalar_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value[: EXCERPT_CHARS * 4]).decode("utf-8", errors="replace")
    if isinstance(value, float):
        return json.dumps(value)  # NaN, Infinity as JavaScript writes them
    if isinstance(value, int) and not isinstance(value, bool):
        digits = value.bit_length() * 0.30103
        return str(value) if digits < 1000 else f"an integer of about {digits:.0f} digits"
    if isinstance(value, str):
        return json.dumps(value[: EXCERPT_CHARS + 1])
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return repr(value)[: EXCERPT_CHARS * 4]


def _pieces(value: Any, depth: int) -> Iterator[str]:
    """``value`` as compact JSON-like text, piece by piece (the caller stops when it has enough)."""
    if depth > EXCERPT_DEPTH:
        yield "…"
        return
    if isinstance(value, dict):
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            yield (", " if index else "") + _scalar_text(str(key)) + ": "
            yield from _pieces(item, depth + 1)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for index, item in enumerate(value):
            if index:
                yield ", "
            yield from _pieces(item, depth + 1)
        yield "]"
    else:
        yield _scalar_text(value)


def _bounded_json(value: Any, limit: int) -> tuple[str, bool]:
    """At most ``limit`` characters of ``value`` as text, and whether that is all of it."""
    text, size = [], 0
    for piece in _pieces(value, 0):
        if piece == "…" or size + len(piece) > limit:
            text.append(piece[: max(0, limit - size)])
            return "".join(text) + "…", False
        text.append(piece)
        size += len(piece)
    return "".join(text), True


def _plain(value: Any) -> Any:
    """A small structure (``_bounded_json`` saw all of it) made JSON-safe: NaN and the like as text."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return excerpt(value)
