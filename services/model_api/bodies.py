"""What model_api's routes take and answer: the request and response bodies of /predict,
/predictions and /model/reload."""

from collections import Counter as Tally
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common.http.bodies import StrictBody
from services.common.messages import (
    ID_RULE,
    CallerId,
    FeaturesBody,
    ModelVersion,
    Target,
    Timestamp,
)
from services.common.tags import TAGS_RULE, Tags
from services.model_api.service import PREDICT_BATCH_MAX, REPORTED_MAX


def _one_of_the_two_forms(schema: dict[str, Any]) -> None:
    """The schema says what the validator enforces: exactly one of the two fields, no nulls; ``id``
    only beside ``features``, ``ids`` (each once) only beside ``instances``. That ``ids`` has as many
    items as ``instances`` is said in words: JSON Schema cannot tie two lengths together."""
    schema["oneOf"] = [
        {"required": ["features"], "not": {"anyOf": [{"required": ["instances"]}, {"required": ["ids"]}]}},
        {"required": ["instances"], "not": {"anyOf": [{"required": ["features"]}, {"required": ["id"]}]}},
    ]
    for field in schema["properties"].values():
        field.pop("default", None)
    for branch in schema["properties"]["ids"]["anyOf"]:
        if branch.get("type") == "array":
            branch.update(uniqueItems=True, minItems=1, maxItems=PREDICT_BATCH_MAX)


class PredictRequest(StrictBody):
    """One row as ``features``, or a batch of rows as ``instances`` — exactly one of the two; with
    your sample's ``id`` (or ``ids``, one per instance) when you will send its label later. A row is
    an object by feature name, or a list of the values in the schema's order (GET /model/schema)."""

    model_config = ConfigDict(json_schema_extra=_one_of_the_two_forms)

    # Neither is optional in type: the one not given stays unset (see model_fields_set), never null.
    features: FeaturesBody = Field(default_factory=list, description="one row: {name: value} or [values in schema order]")
    instances: Annotated[list[FeaturesBody], Field(min_length=1, max_length=PREDICT_BATCH_MAX)] = Field(
        default_factory=list, description=f"1 to {PREDICT_BATCH_MAX} rows, each as features is"
    )
    id: CallerId | None = Field(None, description=f"with features: the sample's id (made here when absent). {ID_RULE}")
    ids: list[CallerId] | None = Field(
        None, description="with instances: one id per row, in order, as many as rows (made here when absent)"
    )
    tags: Tags | None = Field(None, description=f"the prediction's tags (every row's, with instances). {TAGS_RULE}")

    @model_validator(mode="before")
    @classmethod
    def exactly_one_form(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [form for form in ("features", "instances") if form in data]
            if len(given) != 1:
                raise ValueError(
                    'give either "features": {...} (one row) or "instances": [{...}, ...] (a batch), '
                    + ("not both" if given else "neither was given")
                )
        return data

    @model_validator(mode="after")
    def ids_match_the_rows(self) -> "PredictRequest":
        one_row = "features" in self.model_fields_set
        if one_row and self.ids is not None:
            raise ValueError('"ids" goes with "instances"; one row takes "id"')
        if not one_row and self.id is not None:
            raise ValueError('"id" goes with "features"; a batch of "instances" takes "ids", one per row')
        if self.ids is not None:
            if len(self.ids) != len(self.instances):
                raise ValueError(f'"ids" has {len(self.ids)} ids for {len(self.instances)} instances: give one per row')
            _no_repeated_ids(self.ids)
        return self


def _no_repeated_ids(ids: Sequence[str]) -> None:
    repeated = [sample_id for sample_id, count in Tally(ids).items() if count > 1]
    if repeated:
        raise ValueError(f"each item needs its own id; given more than once: {', '.join(repeated[:5])}")


class Unpredictable(RequestValidationError):
    """A 422 for rows the model refuses or predicts no sane number for (counted as such, not as a bad body)."""


class PredictResponse(BaseModel):
    id: str = Field(description="the sample's id: yours, or the one made for it; send its label with it")
    prediction: float
    model_version: str
    monitored: bool = Field(description="published to y_pred (confirmed) for the monitor to join with its label")


class BatchPredictResponse(BaseModel):
    ids: list[str]
    predictions: list[float]
    model_version: str
    monitored: bool


class ReportedItem(StrictBody):
    """A prediction your own stack made: its id (send its label later under it), the value, and the
    features it was made from (for drift; optional), the model that made it and when."""

    id: CallerId = Field(description=ID_RULE)
    prediction: Target
    features: FeaturesBody | None = Field(None, description="{name: value} or [values in schema order]; feeds drift")
    model_version: ModelVersion | None = Field(
        None, description="by default the profile's (register --model-version), else 'external'"
    )
    ts: Timestamp | None = Field(None, description="when it was made (epoch seconds); by default when it is taken here")
    tags: Tags | None = Field(None, description=TAGS_RULE)


class ReportedRequest(StrictBody):
    predictions: Annotated[list[ReportedItem], Field(min_length=1, max_length=REPORTED_MAX)]

    @model_validator(mode="after")
    def one_prediction_per_id(self) -> "ReportedRequest":
        _no_repeated_ids([item.id for item in self.predictions])
        return self


class ReportedAccepted(BaseModel):
    accepted: int = Field(description="predictions published to y_pred and confirmed by the broker")
    with_features: int = Field(description="how many of them came with features (those feed drift)")


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str
    changed: bool
    warnings: list[str]


class ReloadRefused(BaseModel):
    detail: str
    model_version: str = Field(description="the model still in service")
