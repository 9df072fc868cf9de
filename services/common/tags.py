"""A prediction's tags (``{"region": "EU", "channel": "mobile"}``) and the segments metric_api
keeps statistics for. No I/O.

Tags come on every way in (``/predict``, ``/predictions``, ``/samples``, the ``features`` and
``predictions`` queues) and travel on the y_pred message to the join. The limits hold everywhere,
and a breach is refused whole, naming the tag (a 422 over HTTP, ``x-dlq-reason`` on a queue):

- at most ``TAGS_MAX_KEYS`` keys;
- a key is 1 to ``TAG_KEY_MAX`` characters, a letter or ``_`` first, then letters, digits, ``_ . -``;
- a value is a string of 1 to ``TAG_VALUE_MAX`` characters without control characters.

``SEGMENT_KEYS`` names which tag keys (and categorical features of the schema) are segments:
model_api adds the value of each categorical feature named there to the y_pred message's tags,
so metric_api needs no features. A y_pred message may thus carry up to ``Y_PRED_TAGS_MAX_KEYS``.
"""

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

TAGS_MAX_KEYS = 8
TAG_KEY_MAX = 64
TAG_VALUE_MAX = 128
Y_PRED_TAGS_MAX_KEYS = 2 * TAGS_MAX_KEYS  # the caller's tags and the segment features' values
TAG_KEY_PATTERN = rf"^[A-Za-z_][A-Za-z0-9_.-]{{0,{TAG_KEY_MAX - 1}}}$"
_KEY = re.compile(TAG_KEY_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
TAGS_RULE = (
    f"tags are an object of at most {TAGS_MAX_KEYS} keys; a key is 1 to {TAG_KEY_MAX} characters "
    f"(a letter or _ first, then letters, digits, _ . -), a value a string of 1 to {TAG_VALUE_MAX} "
    "characters without control characters"
)


def tag_key_problem(key: Any) -> str | None:
    """Why ``key`` cannot be a tag key (or a segment key), or None."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        shown = str(key)[:80]
        return f"the tag key {shown!r} is not 1 to {TAG_KEY_MAX} characters, a letter or _ first, then letters, digits, _ . -"
    return None


def tags_problem(tags: Any, max_keys: int = TAGS_MAX_KEYS) -> str | None:
    """Why ``tags`` are not valid tags (naming the tag), or None."""
    if not isinstance(tags, dict):
        return f"tags are an object of string values, not {type(tags).__name__}"
    if len(tags) > max_keys:
        return f"{len(tags)} tags given, at most {max_keys} are taken"
    for key, value in tags.items():
        if (problem := tag_key_problem(key)) is not None:
            return problem
        if not isinstance(value, str):
            return f"the tag {key!r} is {type(value).__name__}, not a string"
        if not 1 <= len(value) <= TAG_VALUE_MAX:
            return f"the tag {key!r} is {len(value)} characters long, not 1 to {TAG_VALUE_MAX}"
        if _CONTROL.search(value):
            return f"the tag {key!r} contains a control character"
    return None


def _checker(max_keys: int) -> Any:
    def check(tags: Any) -> Any:
        if (problem := tags_problem(tags, max_keys)) is not None:
            raise ValueError(problem)
        return tags

    return check


def _schema(max_keys: int) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "object",
            "maxProperties": max_keys,
            "propertyNames": {"pattern": TAG_KEY_PATTERN},
            "additionalProperties": {
                "type": "string",
                "minLength": 1,
                "maxLength": TAG_VALUE_MAX,
                "pattern": r"^[^\x00-\x1f\x7f]+$",
            },
            "description": TAGS_RULE,
        }
    )


# Any JSON value goes in, so that a number where a string goes is refused naming the tag.
Tags = Annotated[Any, BeforeValidator(_checker(TAGS_MAX_KEYS)), AfterValidator(dict), _schema(TAGS_MAX_KEYS)]
YPredTags = Annotated[Any, BeforeValidator(_checker(Y_PRED_TAGS_MAX_KEYS)), AfterValidator(dict), _schema(Y_PRED_TAGS_MAX_KEYS)]


def parse_segment_keys(value: str) -> tuple[str, ...]:
    """``SEGMENT_KEYS``: comma-separated keys, each a valid tag key, each once."""
    keys = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    for key in keys:
        if (problem := tag_key_problem(key)) is not None:
            raise ValueError(f"SEGMENT_KEYS: {problem}")
    if len(keys) > Y_PRED_TAGS_MAX_KEYS:
        raise ValueError(f"SEGMENT_KEYS names {len(keys)} keys, at most {Y_PRED_TAGS_MAX_KEYS} are taken")
    return keys


def segment_tags(
    tags: dict[str, str] | None,
    features: list[Any] | None,
    feature_positions: dict[str, int],
) -> dict[str, str] | None:
    """The tags a y_pred message carries: the caller's, and the value of each segment feature
    (``feature_positions``: the categorical features of the schema named in SEGMENT_KEYS, by position
    in a row); a tag of the same name as a segment feature is the caller's word and stays."""
    out = dict(tags) if tags else {}
    if features is not None:
        for name, position in feature_positions.items():
            if name not in out and position < len(features) and (value := features[position]) is not None:
                out[name] = str(value)[:TAG_VALUE_MAX] or "-"
    return out or None


def segment_feature_positions(keys: tuple[str, ...], names: tuple[str, ...], categorical: tuple[int, ...]) -> dict[str, int]:
    """Which of the segment keys are categorical features of a schema, and their positions in a row."""
    wanted = set(keys)
    return {names[i]: i for i in categorical if names[i] in wanted}


def numeric_segment_keys(keys: tuple[str, ...], names: tuple[str, ...], categorical: tuple[int, ...]) -> str | None:
    """A warning if SEGMENT_KEYS names numeric features of a schema (they are never segments: their
    values are not a few categories), else None."""
    numeric = [key for key in keys if key in names and names.index(key) not in categorical]
    if not numeric:
        return None
    return (
        f"SEGMENT_KEYS names {', '.join(map(repr, numeric))}: numeric feature(s) of the model's schema, never segments "
        "(only categorical features and tags are); send a binned value as a tag of another name to segment by it"
    )
