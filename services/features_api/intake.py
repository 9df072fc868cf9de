"""The caller's own data over HTTP: ``POST /labels`` (ground truth, whenever it comes) and
``POST /samples`` (whole rows that go through the model like the demo's).

Each item is validated with the message schema's own types (the id rule, finite numbers) and its
features against the registered model's schema (services/common/schema.py), so what the queues
would dead-letter is refused here with a 422 naming the item and the feature; a request is taken
whole or not at all. The answer comes once the broker has confirmed every
message. The caller's labels are never delayed (LABEL_DELAY_S is the demo's).
"""

import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, HTTPException, Request
from prometheus_client import Counter
from pydantic import BaseModel, Field, model_validator

from services.common.amqp.link import Link
from services.common.amqp.publisher import Outgoing
from services.common.amqp.topology import FEATURES, Y_TRUE, half_queue
from services.common.http.bodies import StrictBody, schema_rows
from services.common.messages import ID_RULE, CallerId, FeaturesBody, FeaturesMessage, LabelMessage, Target
from services.common.schema import FeatureSchema
from services.common.settings import Settings
from services.common.tags import TAGS_RULE, Tags

MAX_ITEMS = 10_000  # labels in one request: its answer is a count, and a label sent again is a duplicate, harmless
# Samples in one request: its answer is their ids (made here where none was given), so it must come back
# before a client gives up on it, as a burst's does (features_api.app.MAX_BURST).
MAX_SAMPLES = 1000
PUBLISH_CHUNK = 1000  # messages handed to the publisher at a time (confirms pipelined within)
LABELS_TAKEN = Counter("caller_labels_published", "Labels of POST /labels and /samples confirmed by the broker")
SAMPLES_TAKEN = Counter("caller_samples_published", "Samples of POST /samples whose features were confirmed")


def _no_repeated_ids(ids: Sequence[str | None], what: str) -> None:
    repeated = [sample_id for sample_id, count in Tally(i for i in ids if i is not None).items() if count > 1]
    if repeated:
        shown = ", ".join(repeated[:5]) + (", ..." if len(repeated) > 5 else "")
        raise ValueError(f"each {what} needs its own id; given more than once: {shown}")


class LabelIn(StrictBody):
    id: CallerId = Field(description=ID_RULE)
    y_true: Target = Field(description="the ground truth of the sample with this id")


class LabelsRequest(StrictBody):
    labels: Annotated[list[LabelIn], Field(min_length=1, max_length=MAX_ITEMS)]

    @model_validator(mode="after")
    def one_label_per_id(self) -> "LabelsRequest":
        _no_repeated_ids([label.id for label in self.labels], "label")
        return self


class LabelsAccepted(BaseModel):
    accepted: int = Field(description="labels published to y_true and confirmed by the broker")


class SampleIn(StrictBody):
    id: CallerId | None = Field(None, description=f"your id for the sample; one is made when absent. {ID_RULE}")
    features: FeaturesBody = Field(description="{name: value} for every feature of the schema, or [values in schema order]")
    y_true: Target | None = Field(None, description="its label, if known now; else send it later to POST /labels")
    tags: Tags | None = Field(None, description=f"the sample's tags, carried with its prediction to the join. {TAGS_RULE}")


class SamplesRequest(StrictBody):
    samples: Annotated[list[SampleIn], Field(min_length=1, max_length=MAX_SAMPLES)]

    @model_validator(mode="after")
    def one_sample_per_id(self) -> "SamplesRequest":
        _no_repeated_ids([sample.id for sample in self.samples], "sample")
        return self


class SamplesAccepted(BaseModel):
    count: int = Field(description="samples whose features (and label, when given) the broker confirmed")
    ids: list[str] = Field(description="their ids, in the order sent (made here where none was given)")
    labels: int = Field(description="how many came with their label")


class CallerIntake:
    """Publishes what callers send: labels to ``y_true``, samples' features to ``features``."""

    def __init__(
        self, settings: Settings, link: Link, next_id: Callable[[], tuple[str, float]], schema: Callable[[], FeatureSchema]
    ) -> None:
        self.settings = settings
        self.link = link
        self._next_id = next_id  # the demo's id clock: ids made here never equal the demo's
        self.schema = schema  # the registered model's, as it is now
        self._features_queue = settings.queue(FEATURES)
        self.labels = 0
        self.samples = 0

    def _label(self, sample_id: str, y_true: float, ts: float) -> Outgoing:
        body = LabelMessage(id=sample_id, body=y_true, ts=ts).to_bytes()
        return Outgoing(half_queue(self.settings, Y_TRUE, sample_id), body, sample_id)

    async def _publish(self, messages: list[Outgoing]) -> None:
        for start in range(0, len(messages), PUBLISH_CHUNK):
            await self.link.publisher.publish_many(messages[start : start + PUBLISH_CHUNK])

    async def publish_labels(self, labels: Sequence[LabelIn]) -> int:
        now = time.time()
        await self._publish([self._label(label.id, label.y_true, now) for label in labels])
        self.labels += len(labels)
        LABELS_TAKEN.inc(len(labels))
        return len(labels)

    def rows(self, samples: Sequence[SampleIn]) -> list[list[float | str | None]]:
        """Each sample's features checked against the schema, in its order (a 422 naming the feature otherwise)."""
        return schema_rows(self.schema(), [sample.features for sample in samples], lambda i: ("body", "samples", i, "features"))

    async def publish_samples(self, samples: Sequence[SampleIn], rows: Sequence[list[float | str | None]]) -> SamplesAccepted:
        schema = self.schema()
        messages: list[Outgoing] = []
        ids: list[str] = []
        labelled = 0
        for sample, row in zip(samples, rows, strict=True):
            if sample.id is None:
                sample_id, ts = self._next_id()
            else:
                sample_id, ts = sample.id, time.time()
            ids.append(sample_id)
            features = FeaturesMessage(id=sample_id, body=row, ts=ts, schema_id=schema.fingerprint, tags=sample.tags).to_bytes()
            messages.append(Outgoing(self._features_queue, features, sample_id))
            if sample.y_true is not None:
                messages.append(self._label(sample_id, sample.y_true, ts))
                labelled += 1
        await self._publish(messages)
        self.samples += len(ids)
        self.labels += labelled
        SAMPLES_TAKEN.inc(len(ids))
        LABELS_TAKEN.inc(labelled)
        return SamplesAccepted(count=len(ids), ids=ids, labels=labelled)


async def get_intake(request: Request) -> CallerIntake:
    return cast(CallerIntake, request.state.intake)  # put there by the lifespan's state


Intake = Annotated[CallerIntake, Depends(get_intake)]
router = APIRouter(tags=["your data"])
NOT_CONNECTED: dict[int | str, dict[str, Any]] = {503: {"description": "broker not connected: nothing was published"}}


def _connected(intake: CallerIntake) -> None:
    if (problem := intake.link.problem()) is not None:
        raise HTTPException(503, detail=f"cannot publish now, nothing was taken: {problem}")


@router.post("/labels", responses=NOT_CONNECTED)
async def post_labels(request: LabelsRequest, intake: Intake) -> LabelsAccepted:
    """Ground truth for predictions made earlier (by /predict or the queues), by id: each label
    joins its prediction into one metric_log.csv row, however late it comes."""
    _connected(intake)
    return LabelsAccepted(accepted=await intake.publish_labels(request.labels))


@router.post("/samples", responses=NOT_CONNECTED)
async def post_samples(request: SamplesRequest, intake: Intake) -> SamplesAccepted:
    """Your own rows: model_api predicts each as it does the demo's; with ``y_true`` (now, or later
    through /labels) each becomes a row of metric_log.csv."""
    rows = intake.rows(request.samples)
    _connected(intake)
    return await intake.publish_samples(request.samples, rows)
