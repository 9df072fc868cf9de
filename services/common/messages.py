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
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt

from services.common.settings import get_settings

FEATURE_COUNT = 10
# Ids go into a CSV column unquoted, so they must not contain separators or newlines.
ID_PATTERN = r"^[0-9A-Za-z._:-]{1,64}$"
MAX_MESSAGE_BYTES = 64 * 1024


def format_sample_id(epoch_us: int) -> str:
    """The seed's id format, seconds.microseconds: 1669147134.196809."""
    seconds, micros = divmod(epoch_us, 1_000_000)
    return f"{seconds}.{micros:06d}"


def _normalise_id(value: Any) -> Any:
    # A numeric id from an old producer: keep the seconds.microseconds form.
    if isinstance(value, bool):
        return value  # refused by the str type with a clear message
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("a numeric id must be a finite, non-negative timestamp")
        return format_sample_id(round(value * 1_000_000))
    return value


SampleId = Annotated[str, BeforeValidator(_normalise_id), Field(pattern=ID_PATTERN)]
# Numbers only (no "151.0" strings, no booleans), finite.
Number = Annotated[StrictFloat | StrictInt, Field(allow_inf_nan=False), AfterValidator(float)]
# Epoch seconds from 1970 to 2286: a ts outside would make every latency absurd.
TS_MAX = 1e10


def _within_feature_bound(value: float) -> float:
    bound = get_settings().FEATURE_ABS_MAX
    if abs(value) > bound:
        raise ValueError(f"{value:g} is beyond ±{bound:g} (FEATURE_ABS_MAX; the diabetes features are within ±0.3)")
    return value


def _within_target_bound(value: float) -> float:
    bound = get_settings().TARGET_ABS_MAX
    if abs(value) > bound:
        raise ValueError(f"{value:g} is beyond ±{bound:g} (TARGET_ABS_MAX; the diabetes target is within 25..346)")
    return value


def _plausible_ts(value: float) -> float:
    if not 0 <= value <= TS_MAX:
        raise ValueError(f"{value:g} is not an epoch time in seconds (0 to {TS_MAX:g})")
    return value


# A feature value, and a label or prediction (a value of the model's target), within their sane bounds.
Feature = Annotated[Number, AfterValidator(_within_feature_bound)]
Target = Annotated[Number, AfterValidator(_within_target_bound)]
Timestamp = Annotated[Number, AfterValidator(_plausible_ts)]


class SampleMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    id: SampleId
    ts: Timestamp | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class FeaturesMessage(SampleMessage):
    body: Annotated[list[Feature], Field(min_length=FEATURE_COUNT, max_length=FEATURE_COUNT)]


class LabelMessage(SampleMessage):
    body: Target


# The model version of a prediction that did not say (an older producer), and of rows
# whose version is not known (older metric state, rows recovered from the CSV).
UNKNOWN_VERSION = "unknown"


class PredictionMessage(SampleMessage):
    body: Target
    model_version: str = Field(UNKNOWN_VERSION, max_length=64)
