"""The three message kinds on the wire, and how a sample id looks.

Messages are UTF-8 JSON objects. Unknown extra fields are ignored (a newer producer may
add some); everything named here is validated, so a bad message is refused with the
reason before it can reach a model or the CSV.
"""

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt

FEATURE_COUNT = 10
# The ten columns of scikit-learn's diabetes data, in the order every features body carries them.
FEATURE_NAMES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
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


class SampleMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    id: SampleId
    ts: Number | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class FeaturesMessage(SampleMessage):
    body: Annotated[list[Number], Field(min_length=FEATURE_COUNT, max_length=FEATURE_COUNT)]


class LabelMessage(SampleMessage):
    body: Number


# The model version of a prediction that did not say (an older producer), and of rows
# whose version is not known (older metric state, rows recovered from the CSV).
UNKNOWN_VERSION = "unknown"


class PredictionMessage(SampleMessage):
    body: Number
    model_version: str = Field(UNKNOWN_VERSION, max_length=64)
