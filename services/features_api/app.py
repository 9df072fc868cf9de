"""features_api: publishes samples (features and label under one id) on a timer and on demand."""

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict, cast

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from prometheus_client import Counter
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from services.common.amqp.link import BrokerLink, Link
from services.common.amqp.publisher import Outgoing
from services.common.amqp.topology import FEATURES, Y_TRUE, DelayQueue, delay_queue, delay_queues, half_queue, half_queues
from services.common.delay import bucket_of, expiration_ms
from services.common.files import FEATURES_STATE
from services.common.http import StrictBody, service_app
from services.common.messages import FEATURE_NAMES, FeaturesMessage, LabelMessage
from services.common.settings import Settings, get_settings
from services.features_api import intake
from services.features_api.intake import CallerIntake
from services.features_api.sampler import MAX_NOISE, MAX_SCALE, MAX_SHIFT, DiabetesSampler, Sample, Scenario, known_feature
from services.features_api.state import StateFileError, load_paused, save_paused

log = logging.getLogger(__name__)

# The most samples one POST /features/publish may ask for: its answer (the ids) comes back within
# a second or two even on a small machine, before any client gives up on it. More: several requests.
MAX_BURST = 1000
# Samples published concurrently in a burst: enough to keep confirms pipelined.
BURST_WINDOW = 500
SAMPLES_SENT = Counter("samples_published", "Samples whose features and label were both confirmed")


class FeaturesPublisher:
    """Draws samples and publishes each to ``features`` and ``y_true``, both confirmed.

    With LABEL_DELAY_S the label goes to a delay queue instead, with its delay as expiration:
    the broker moves it to ``y_true`` when that is up (services/common/delay.py), so a label
    waiting there survives this process dying.
    """

    def __init__(self, settings: Settings, sampler: DiabetesSampler, link: Link | None = None) -> None:
        self.settings = settings
        self.sampler = sampler
        self.sent = 0
        self.state_path = settings.LOGS_DIR / FEATURES_STATE
        self.paused = load_paused(self.state_path)
        self.delay = settings.label_delay()
        self._delay_rng = random.Random(settings.FEATURES_SEED)  # noqa: S311 - a simulated delay, not a secret
        self._features_queue = settings.queue(FEATURES)
        publishes: list[str | DelayQueue] = [self._features_queue, *half_queues(settings, Y_TRUE)]
        publishes += delay_queues(settings, Y_TRUE, self.delay)
        self.link = link or BrokerLink(settings, "features_api", publishes=publishes)
        self._stop = asyncio.Event()
        self._loop_sample = asyncio.Lock()
        self._connected = False

    def _messages(self, sample: Sample) -> tuple[Outgoing, Outgoing]:
        features = FeaturesMessage(id=sample.id, body=sample.features, ts=sample.ts)
        label = LabelMessage(id=sample.id, body=sample.label, ts=sample.ts)
        labels = half_queue(self.settings, Y_TRUE, sample.id)
        if self.delay.off:
            held_back = Outgoing(labels, label.to_bytes(), sample.id)
        else:
            delay_s = self.delay.draw(self._delay_rng)
            queue = delay_queue(labels, bucket_of(delay_s)).name
            held_back = Outgoing(queue, label.to_bytes(), sample.id, expiration_ms=expiration_ms(delay_s))
        return Outgoing(self._features_queue, features.to_bytes(), sample.id), held_back

    async def publish_samples(self, samples: list[Sample]) -> None:
        """Publish each sample's features and label; return once the broker confirmed all of them."""
        await self.link.publisher.publish_many([message for sample in samples for message in self._messages(sample)])
        self.sent += len(samples)
        SAMPLES_SENT.inc(len(samples))

    async def publish_burst(self, count: int) -> list[str]:
        samples = [self.sampler.draw() for _ in range(count)]
        for start in range(0, count, BURST_WINDOW):
            await self.publish_samples(samples[start : start + BURST_WINDOW])
        return [s.id for s in samples]

    async def run(self) -> None:
        """The timer loop: after every FEATURES_INTERVAL_S, one sample (unless paused or FEATURES_LOOP is off)."""
        await self.link.ready()
        self._connected = True
        if not self.settings.FEATURES_LOOP:
            log.info("FEATURES_LOOP is off: no demo samples; /samples, /labels and /features/publish publish")
            return
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.settings.FEATURES_INTERVAL_S)
            except TimeoutError:
                pass  # the interval is up: draw the next sample
            else:
                return
            async with self._loop_sample:
                if not self.paused:
                    await self.publish_samples([self.sampler.draw()])

    async def pause(self) -> None:
        """Stop the loop; returns once a sample it was publishing is out, so none follows."""
        self.paused = True
        async with self._loop_sample:
            pass

    async def keep_paused(self) -> None:
        """Save the pause, so that a restart keeps it (StateFileError when the file cannot be written)."""
        await asyncio.to_thread(save_paused, self.state_path, self.paused)

    async def stop_loop(self, task: asyncio.Task[None]) -> None:
        # Let a sample being published finish, so its features never go out without its label.
        self._stop.set()
        if not self._connected:
            task.cancel()  # still waiting for the broker: nothing is being published
        try:
            await asyncio.wait_for(task, timeout=self.settings.PUBLISH_TIMEOUT_S)
        except asyncio.CancelledError:
            pass
        except TimeoutError:
            log.warning("the sample loop did not finish within %ss; stopping it", self.settings.PUBLISH_TIMEOUT_S)


class State(TypedDict):
    features: FeaturesPublisher
    intake: CallerIntake


def create_app(settings: Settings | None = None, link: Link | None = None) -> FastAPI:
    """The features_api app; ``link`` replaces the broker connection (in-process tests)."""
    settings = settings or get_settings()
    publisher = FeaturesPublisher(settings, DiabetesSampler.diabetes(settings.FEATURES_SEED), link)
    callers = CallerIntake(settings, publisher.link, publisher.sampler.clock.next)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        publisher.link.start()
        loop = asyncio.create_task(publisher.run(), name="features-loop")
        try:
            yield {"features": publisher, "intake": callers}
        finally:
            await publisher.stop_loop(loop)
            await publisher.link.close()

    app = service_app("features_api", lifespan, publisher.link.problem, publisher.link.details, settings=settings)
    app.include_router(router)
    app.include_router(intake.router)
    return app


async def get_publisher(request: Request) -> FeaturesPublisher:
    return cast(FeaturesPublisher, request.state.features)  # put there by the lifespan's state


Publisher = Annotated[FeaturesPublisher, Depends(get_publisher)]


class Status(BaseModel):
    sent: int = Field(description="demo samples whose features and label were both confirmed by the broker")
    interval_s: float
    paused: bool = Field(description="the demo loop is paused (kept across restarts)")
    loop: bool = Field(description="the demo loop runs at all (FEATURES_LOOP)")
    label_delay_s: str = Field(description="LABEL_DELAY_S: how late the demo's labels reach y_true")
    broker: str = Field(description="'connected', or why not")


def _within_burst_cap(count: int) -> int:
    if count > MAX_BURST:
        raise ValueError(f"at most {MAX_BURST} samples per request, so that their ids come back in time; send several requests")
    return count


class BurstRequest(StrictBody):
    count: Annotated[int, AfterValidator(_within_burst_cap)] = Field(
        ge=1, description=f"samples to publish now, 1 to {MAX_BURST}", json_schema_extra={"maximum": MAX_BURST}
    )


class BurstResponse(BaseModel):
    count: int
    ids: list[str]


router = APIRouter(prefix="/features", tags=["features"])


@router.get("/status")
async def status(publisher: Publisher) -> Status:
    return Status(
        sent=publisher.sent,
        interval_s=publisher.settings.FEATURES_INTERVAL_S,
        paused=publisher.paused,
        loop=publisher.settings.FEATURES_LOOP,
        label_delay_s=publisher.settings.LABEL_DELAY_S,
        broker=publisher.link.problem() or "connected",
    )


@router.post("/publish", responses={503: {"description": "broker not connected"}})
async def publish(request: BurstRequest, publisher: Publisher) -> BurstResponse:
    if (problem := publisher.link.problem()) is not None:
        raise HTTPException(503, detail=f"cannot publish now: {problem}")
    ids = await publisher.publish_burst(request.count)
    return BurstResponse(count=len(ids), ids=ids)


CANNOT_SAVE: dict[int | str, dict[str, Any]] = {
    500: {"description": "the state file could not be written: the change holds until a restart"}
}


@router.post("/pause", responses=CANNOT_SAVE)
async def pause(publisher: Publisher) -> Status:
    await publisher.pause()
    await _keep(publisher)
    return await status(publisher)


@router.post("/resume", responses=CANNOT_SAVE)
async def resume(publisher: Publisher) -> Status:
    publisher.paused = False
    await _keep(publisher)
    return await status(publisher)


async def _keep(publisher: FeaturesPublisher) -> None:
    try:
        await publisher.keep_paused()
    except StateFileError as exc:
        raise HTTPException(500, detail=f"{'paused' if publisher.paused else 'resumed'} until a restart only: {exc}") from exc


Feature = Annotated[str, AfterValidator(known_feature)]


def per_feature(low: float, high: float) -> WithJsonSchema:
    """The schema of a mapping of the ten features to a number in std units between low and high."""
    number = {"type": "number", "minimum": low, "maximum": high}
    return WithJsonSchema({"type": "object", "propertyNames": {"enum": list(FEATURE_NAMES)}, "additionalProperties": number})


Shift = Annotated[float, Field(ge=-MAX_SHIFT, le=MAX_SHIFT, allow_inf_nan=False)]
Scale = Annotated[float, Field(ge=0, le=MAX_SCALE, allow_inf_nan=False)]
Noise = Annotated[float, Field(ge=0, le=MAX_NOISE, allow_inf_nan=False)]
SHIFT_SCHEMA, SCALE_SCHEMA, NOISE_SCHEMA = (
    per_feature(-MAX_SHIFT, MAX_SHIFT),
    per_feature(0, MAX_SCALE),
    per_feature(0, MAX_NOISE),
)


def for_every_feature(value: Any) -> Any:
    """A single noise level is every feature's."""
    return dict.fromkeys(FEATURE_NAMES, value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class ScenarioRequest(BaseModel):
    """What the demo sends from now on, per feature, in units of that feature's std (GET shows them)."""

    model_config = ConfigDict(extra="forbid")

    shift: Annotated[dict[Feature, Shift], SHIFT_SCHEMA] = Field(
        default_factory=dict, description='added: e.g. {"bmi": 1.0} moves bmi up one std'
    )
    scale: Annotated[dict[Feature, Scale], SCALE_SCHEMA] = Field(
        default_factory=dict, description="the spread around the feature's mean multiplied: 2.0 twice as wide, 0 constant"
    )
    noise: Annotated[
        dict[Feature, Noise],
        BeforeValidator(for_every_feature),
        WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_NOISE}, NOISE_SCHEMA.json_schema]}),
    ] = Field(default_factory=dict, description="the std of gaussian noise added: one number for every feature, or per feature")


class ScenarioState(BaseModel):
    active: bool = Field(description="whether what is sent differs from the data")
    since: float | None = Field(description="when the scenario was set (epoch s)")
    shift: dict[str, float]
    scale: dict[str, float]
    noise: dict[str, float]
    std: dict[str, float] = Field(description="each feature's std over the data: the unit of shift and noise")


def scenario_state(publisher: FeaturesPublisher) -> ScenarioState:
    scenario, sampler = publisher.sampler.scenario, publisher.sampler
    return ScenarioState(
        active=scenario.active,
        since=scenario.since,
        shift=dict(scenario.shift),
        scale=dict(scenario.scale),
        noise=dict(scenario.noise),
        std=dict(zip(FEATURE_NAMES, sampler.std.tolist(), strict=False)),
    )


SCENARIO_422: dict[int | str, dict[str, Any]] = {
    422: {"description": "an unknown feature (the answer lists the ten) or a value out of bounds"}
}


@router.post("/scenario", responses=SCENARIO_422)
async def set_scenario(request: ScenarioRequest, publisher: Publisher) -> ScenarioState:
    """Change what the demo sends from now on (the timer and /features/publish), replacing any
    scenario set before; the labels stay the data's. ``DELETE`` ends it."""
    publisher.sampler.set_scenario(Scenario(request.shift, request.scale, request.noise, since=time.time()))
    state = scenario_state(publisher)
    log.info("scenario set: shift %s, scale %s, noise %s (std units)", state.shift, state.scale, state.noise)
    return state


@router.get("/scenario")
async def get_scenario(publisher: Publisher) -> ScenarioState:
    return scenario_state(publisher)


@router.delete("/scenario")
async def end_scenario(publisher: Publisher) -> ScenarioState:
    """The demo sends the data as it is again."""
    publisher.sampler.set_scenario(Scenario())
    log.info("scenario ended: the demo sends the data as it is")
    return scenario_state(publisher)
