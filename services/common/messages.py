"""The three message kinds on the wire, and how a sample id looks.

Messages are UTF-8 JSON objects. Unknown extra fields are ignored (a newer producer may
add some); everything named here is validated, so a bad message is refused with the
reason before it can reach a model or the CSV.

Numbers are finite and sane: a feature within ±FEATURE_ABS_MAX, a label or prediction within
±TARGET_ABS_MAX (settings), a ``ts`` a plausible epoch time. An absurd but finite value
(1e300) would overflow a model's arithmetic, the CSV's absolute error or the statistics'
sums; it is refused here, on the queues and over HTTP alike.
"""

import math
import re
import time
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from services.common.schema import FeatureSchema, SchemaViolation
from services.common.settings import get_settings
from services.common.tags import Tags, YPredTags

# Ids go into a CSV column unquoted, so they must not contain separators or newlines.
ID_MAX_LENGTH = 64
ID_PATTERN = rf"^[0-9A-Za-z._:-]{{1,{ID_MAX_LENGTH}}}$"
# What every refusal of an id says (the 422s of the HTTP routes, x-dlq-reason on the queues).
ID_RULE = f"an id is 1 to {ID_MAX_LENGTH} characters, each a letter A-Z a-z, a digit 0-9 or one of . _ : -"
_ID_CHARACTER = re.compile(r"[0-9A-Za-z._:-]")
_VALID_ID = re.compile(rf"[0-9A-Za-z._:-]{{1,{ID_MAX_LENGTH}}}").fullmatch  # the rule in one match: the common case
MAX_MESSAGE_BYTES = 64 * 1024


def format_sample_id(epoch_us: int) -> str:
    """The seed's id format, seconds.microseconds: 1669147134.196809."""
    seconds, micros = divmod(epoch_us, 1_000_000)
    return f"{seconds}.{micros:06d}"


class SampleIdClock:
    """Ids in the seed's timestamp format, strictly increasing, so never shared by two samples
    of one process.

    Two samples drawn within one microsecond (a burst) would get the same wall-clock
    timestamp; the clock then moves on by one microsecond instead. ``suffix`` (digits)
    follows the microseconds: a second source of ids (model_api's /predict) appends one so
    that its ids can never equal the features service's, whatever the two clocks say.
    """

    def __init__(self, now: Callable[[], float] = time.time, suffix: str = "") -> None:
        if suffix and not suffix.isdigit():
            raise ValueError(f"an id clock's suffix is digits, not {suffix!r}")
        self._now = now
        self._suffix = suffix
        self._last_us = 0

    def next(self) -> tuple[str, float]:
        epoch_us = max(round(self._now() * 1_000_000), self._last_us + 1)
        self._last_us = epoch_us
        return format_sample_id(epoch_us) + self._suffix, epoch_us / 1_000_000


def id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid sample id (the rule included), or None when it is one."""
    if not value:
        problem = "the id is empty"
    elif len(value) > ID_MAX_LENGTH:
        problem = f"the id is {len(value)} characters long"
    else:
        bad = sorted({character for character in value if not _ID_CHARACTER.fullmatch(character)})
        if not bad:
            return None
        problem = f"the id contains {', '.join(map(repr, bad[:5]))}"
    return f"{problem}; {ID_RULE}"


def _check_id(value: str) -> str:
    if _VALID_ID(value):
        return value
    if (problem := id_problem(value)) is not None:
        raise ValueError(problem)
    return value


def _normalise_id(value: Any) -> Any:
    # A numeric id from an old producer: keep the seconds.microseconds form.
    if isinstance(value, bool):
        return value  # refused by the str type with a clear message
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("a numeric id must be a finite, non-negative timestamp")
        return format_sample_id(round(value * 1_000_000))
    return value


_ID_SCHEMA = WithJsonSchema(
    {"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": ID_MAX_LENGTH, "description": ID_RULE}
)
SampleId = Annotated[str, BeforeValidator(_normalise_id), AfterValidator(_check_id), _ID_SCHEMA]
# An id sent over HTTP (/predict, /labels, /samples): a string, as the routes' schemas say; the
# numeric ids old producers put on the queues are not taken there.
CallerId = Annotated[str, AfterValidator(_check_id), _ID_SCHEMA]
# Numbers only (no "151.0" strings, no booleans), finite.
Number = Annotated[StrictFloat | StrictInt, Field(allow_inf_nan=False), AfterValidator(float)]
# Epoch seconds from 1970 to 2286: a ts outside would make every latency absurd.
TS_MAX = 1e10


def _within_target_bound(value: float) -> float:
    bound = get_settings().TARGET_ABS_MAX
    if abs(value) > bound:
        raise ValueError(f"{value:g} is beyond ±{bound:g} (TARGET_ABS_MAX; the diabetes target is within 25..346)")
    return value


def _plausible_ts(value: float) -> float:
    if not 0 <= value <= TS_MAX:
        raise ValueError(f"{value:g} is not an epoch time in seconds (0 to {TS_MAX:g})")
    return value


def _schema_bound(setting: str) -> Callable[[dict[str, Any]], None]:
    """The bound in the JSON schema (/docs, schemathesis), as configured when the schema is made."""

    def add(schema: dict[str, Any]) -> None:
        bound = getattr(get_settings(), setting)
        schema.update(minimum=-bound, maximum=bound, description=f"a number within ±{bound:g} ({setting})")

    return add


# A label or prediction (a value of the model's target), within its sane bounds.
Target = Annotated[Number, AfterValidator(_within_target_bound), Field(json_schema_extra=_schema_bound("TARGET_ABS_MAX"))]
Timestamp = Annotated[
    Number,
    AfterValidator(_plausible_ts),
    Field(json_schema_extra={"minimum": 0, "maximum": TS_MAX, "description": "epoch seconds"}),
]
# One sample's features, as JSON gives them: checked against the model's schema where it is known
# (services/common/schema.py), on the queues through the validation context (``SCHEMA_CONTEXT``), over
# HTTP by the route.
# The mark of a features body in an OpenAPI document: service_app puts the model's own schema there.
FEATURES_SCHEMA_MARK = "x-features-of-the-model"
_FEATURES_SCHEMA = WithJsonSchema(
    {
        FEATURES_SCHEMA_MARK: True,
        "anyOf": [
            {"type": "object", "description": "every feature of the model's schema by name: a number, a string or null"},
            {"type": "array", "description": "the values in the schema's order"},
        ],
        "description": "the features of one sample (GET :8002/model/info lists the schema)",
    }
)


def _object_or_list(body: Any) -> Any:
    if isinstance(body, dict | list):
        return body
    try:
        FeatureSchema.numeric(["_"]).row(body)  # says what it is, as the schema's refusals do
    except SchemaViolation as exc:
        raise schema_error(exc) from None
    return body


# Any JSON value goes in, so that a string or number where the features go is refused in the schema's words.
FeaturesBody = Annotated[Any, AfterValidator(_object_or_list), _FEATURES_SCHEMA]
SCHEMA_CONTEXT = "schema"  # the key of the FeatureSchema in a validation context


def schema_error(exc: SchemaViolation) -> PydanticCustomError:
    """A refusal by the schema as a pydantic error: its type says the kind (counted by model_api), its
    message names the feature."""
    return PydanticCustomError(f"feature_{exc.kind}", "{problems}", {"problems": str(exc)})


def checked_features(body: Any, info: ValidationInfo, fingerprint: str | None = None) -> Any:
    """``body`` in schema order, checked against the schema of the validation context (as it is without one)."""
    schema: FeatureSchema | None = (info.context or {}).get(SCHEMA_CONTEXT)
    if schema is None:
        return body
    if fingerprint is not None and fingerprint != schema.fingerprint and isinstance(body, list):
        raise PydanticCustomError(
            "feature_schema_changed",
            "these features were published in the order of schema {sent}, and the model in service has schema "
            "{serving} ({listing}): publish them again, or as an object by name",
            {"sent": fingerprint, "serving": schema.fingerprint, "listing": schema.listing()},
        )
    try:
        return schema.row(body)
    except SchemaViolation as exc:
        raise schema_error(exc) from None


class SampleMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    id: SampleId
    ts: Timestamp | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class FeaturesMessage(SampleMessage):
    # The schema the list was published for (FeatureSchema.fingerprint): a list is positional, so a
    # model_api serving another schema refuses it instead of reading its values as other features.
    schema_id: str | None = Field(None, max_length=64)
    body: FeaturesBody
    tags: Tags | None = None  # the caller's (services/common/tags.py): carried to y_pred

    @field_validator("body", mode="after")
    @classmethod
    def _fits_the_schema(cls, body: Any, info: ValidationInfo) -> Any:
        return checked_features(body, info, info.data.get("schema_id"))


class LabelMessage(SampleMessage):
    body: Target


# The model version of a prediction that did not say (an older producer), and of rows
# whose version is not known (older metric state, rows recovered from the CSV).
UNKNOWN_VERSION = "unknown"


ModelVersion = Annotated[str, Field(max_length=64)]


class PredictionMessage(SampleMessage):
    body: Target
    model_version: ModelVersion = UNKNOWN_VERSION
    # Optional (an older consumer ignores it): the caller's tags and the segment features' values.
    tags: YPredTags | None = None
    # The loss model's estimate of |y_true - body| (issue 24; docs/monitoring.md): absent when the
    # model has no loss model or the prediction came without features. An older consumer ignores it.
    estimated_error: Annotated[Number, Field(ge=0)] | None = None


class ReportedPrediction(SampleMessage):
    """A prediction made elsewhere (the ``predictions`` queue; ``POST /predictions`` takes the same items):
    model_api checks its features against the schema, feeds drift with them and publishes it to y_pred."""

    body: Target
    model_version: ModelVersion | None = None
    schema_id: str | None = Field(None, max_length=64)  # as a features message's: the schema a list of features follows
    features: FeaturesBody | None = None
    tags: Tags | None = None

    @field_validator("features", mode="after")
    @classmethod
    def _fits_the_schema(cls, features: Any, info: ValidationInfo) -> Any:
        return None if features is None else checked_features(features, info, info.data.get("schema_id"))
