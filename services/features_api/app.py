"""features_api: publishes samples (features and label under one id) on a timer and on demand, drawn
from the registered model's reference (services/features_api/demo.py); for a model served
elsewhere, the prediction the reference recorded goes with the features to ``predictions``."""

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict, cast

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import Counter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.common.amqp.link import BrokerLink, Link
from services.common.amqp.publisher import Outgoing
from services.common.amqp.topology import (
    FEATURES,
    PREDICTIONS,
    Y_TRUE,
    DelayQueue,
    delay_queue,
    delay_queues,
    half_queue,
    half_queues,
)
from services.common.delay import bucket_of, expiration_ms
from services.common.files import FEATURES_STATE
from services.common.http.app import service_app
from services.common.http.bodies import StrictBody
from services.common.messages import FeaturesMessage, LabelMessage, ReportedPrediction, SampleIdClock
from services.common.settings import Settings, get_settings
from services.features_api import intake
from services.features_api.demo import RegistrationWatch
from services.features_api.intake import CallerIntake
from services.features_api.sampler import (
    MAX_NOISE,
    MAX_SCALE,
    MAX_SHIFT,
    ReferenceSampler,
    Sample,
    Scenario,
    ScenarioError,
    scenario_for,
)
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

    def __init__(self, settings: Settings, registration: RegistrationWatch, link: Link | None = None) -> None:
        self.settings = settings
        self.registration = registration
        self.clock = SampleIdClock()  # also gives the ids of the callers' own samples: one clock, unique ids
        self.sent = 0
        self.state_path = settings.LOGS_DIR / FEATURES_STATE
        self.paused = load_paused(self.state_path)
        self.delay = settings.label_delay()
        self._delay_rng = random.Random(settings.FEATURES_SEED)  # noqa: S311 - a simulated delay, not a secret
        self._features_queue = settings.queue(FEATURES)
        self._predictions_queue = settings.queue(PREDICTIONS)
        publishes: list[str | DelayQueue] = [self._features_queue, self._predictions_queue, *half_queues(settings, Y_TRUE)]
        publishes += delay_queues(settings, Y_TRUE, self.delay)
        self.link = link or BrokerLink(settings, "features_api", publishes=publishes)
        self._stop = asyncio.Event()
        self._loop_sample = asyncio.Lock()
        self._connected = False

    @property
    def sampler(self) -> ReferenceSampler | None:
        return self.registration.current.sampler

    async def follow_registration(self) -> None:
        """Read the registration again if its sidecar changed (a register or train meanwhile); a
        scenario set for the old schema ends with it."""
        if not self.registration.changed():
            return
        registered = await asyncio.to_thread(self.registration.reload)
        old = self.sampler
        self.registration.use(registered)
        if old is not None and old.scenario.active and registered.sampler is not None:
            if registered.schema == old.schema:
                registered.sampler.set_scenario(old.scenario)
            else:
                log.warning("the schema changed: the scenario set for the old one ends")

    def _draw(self, count: int) -> list[Sample]:
        sampler = self.sampler
        if sampler is None:
            raise HTTPException(503, detail=f"the demo has no rows to draw: {self.registration.current.unavailable}")
        return [sampler.draw(*self.clock.next()) for _ in range(count)]

    def _messages(self, sample: Sample) -> tuple[Outgoing, Outgoing]:
        schema = self.registration.current.schema
        if sample.prediction is None:
            features = FeaturesMessage(id=sample.id, body=sample.features, ts=sample.ts, schema_id=schema.fingerprint)
            first = Outgoing(self._features_queue, features.to_bytes(), sample.id)
        else:  # a model served elsewhere: its prediction, as its own stack would report it
            reported = ReportedPrediction(
                id=sample.id, body=sample.prediction, ts=sample.ts, features=sample.features, schema_id=schema.fingerprint
            )
            first = Outgoing(self._predictions_queue, reported.to_bytes(), sample.id)
        label = LabelMessage(id=sample.id, body=sample.label, ts=sample.ts)
        labels = half_queue(self.settings, Y_TRUE, sample.id)
        if self.delay.off:
            held_back = Outgoing(labels, label.to_bytes(), sample.id)
        else:
            delay_s = self.delay.draw(self._delay_rng)
            queue = delay_queue(labels, bucket_of(delay_s)).name
            held_back = Outgoing(queue, label.to_bytes(), sample.id, expiration_ms=expiration_ms(delay_s))
        return first, held_back

    async def publish_samples(self, samples: list[Sample]) -> None:
        """Publish each sample's features and label; return once the broker confirmed all of them."""
        await self.link.publisher.publish_many([message for sample in samples for message in self._messages(sample)])
        self.sent += len(samples)
        SAMPLES_SENT.inc(len(samples))

    async def publish_burst(self, count: int) -> list[str]:
        await self.follow_registration()
        samples = self._draw(count)
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
                await self.follow_registration()
                if not self.paused and self.sampler is not None:
                    await self.publish_samples(self._draw(1))

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
    publisher = FeaturesPublisher(settings, RegistrationWatch(settings.MODEL_PATH, settings.FEATURES_SEED), link)
    callers = CallerIntake(settings, publisher.link, publisher.clock.next, lambda: publisher.registration.current.schema)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        publisher.link.start()
        loop = asyncio.create_task(publisher.run(), name="features-loop")
        try:
            yield {"features": publisher, "intake": callers}
        finally:
            await publisher.stop_loop(loop)
            await publisher.link.close()

    app = service_app(
        "features_api",
        lifespan,
        publisher.link.problem,
        publisher.link.details,
        settings=settings,
        features_schema=lambda: publisher.registration.current.schema,
    )
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
    demo: str = Field(description="where the demo's rows come from, or why there are none to draw")
    schema_: str = Field(alias="schema", serialization_alias="schema", description="the schema: its fingerprint and features")
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


@router.get("/status", response_model_by_alias=True)
async def status(publisher: Publisher) -> Status:
    current = publisher.registration.current
    return Status(
        sent=publisher.sent,
        interval_s=publisher.settings.FEATURES_INTERVAL_S,
        paused=publisher.paused,
        loop=publisher.settings.FEATURES_LOOP,
        demo=current.unavailable or f"draws from {current.source}",
        schema=f"{current.schema.fingerprint}: {current.schema.describe()}",
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


Shift = float | str | dict[str, float]


class ScenarioRequest(BaseModel):
    """What the demo sends from now on, per feature of the schema (GET shows it): a numeric feature in
    units of its std, a categorical one by moving rows to a category."""

    model_config = ConfigDict(extra="forbid")

    shift: dict[str, Shift] = Field(
        default_factory=dict,
        description=(
            'numeric: added, in std units ({"bmi": 1.0} moves bmi up one std, within '
            f"±{MAX_SHIFT:g}); categorical: a category every row moves to, or the shares moved to each "
            '({"city": {"Lyon": 0.3}}: 30 % of the rows drawn get Lyon)'
        ),
    )
    scale: dict[str, float] = Field(
        default_factory=dict,
        description=f"numeric: the spread around the mean multiplied (0 to {MAX_SCALE:g}): 2.0 twice as wide, 0 constant",
    )
    noise: float | dict[str, float] = Field(
        default_factory=dict,
        description=f"numeric: the std of gaussian noise added (0 to {MAX_NOISE:g} std units): "
        "one number for every numeric feature, or per feature",
    )


class ScenarioState(BaseModel):
    active: bool = Field(description="whether what is sent differs from the data")
    since: float | None = Field(description="when the scenario was set (epoch s)")
    shift: dict[str, float | dict[str, float]]
    scale: dict[str, float]
    noise: dict[str, float]
    std: dict[str, float] = Field(description="each numeric feature's std over the reference: the unit of shift and noise")


def scenario_state(publisher: FeaturesPublisher) -> ScenarioState:
    sampler = publisher.sampler
    if sampler is None:
        return ScenarioState(active=False, since=None, shift={}, scale={}, noise={}, std={})
    scenario = sampler.scenario
    return ScenarioState(active=scenario.active, since=scenario.since, **scenario.to_json(), std=sampler.std_by_name())


SCENARIO_422: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "a feature not in the schema (the answer lists the schema's), a value out of bounds, "
        "or a change its kind does not take"
    }
}


@router.post("/scenario", responses={**SCENARIO_422, 503: {"description": "the demo has no rows to draw"}})
async def set_scenario(request: ScenarioRequest, publisher: Publisher) -> ScenarioState:
    """Change what the demo sends from now on (the timer and /features/publish), replacing any
    scenario set before; the labels stay the data's. ``DELETE`` ends it."""
    await publisher.follow_registration()
    sampler = publisher.sampler
    if sampler is None:
        raise HTTPException(503, detail=f"the demo has no rows to draw: {publisher.registration.current.unavailable}")
    try:
        scenario = scenario_for(sampler.schema, request.shift, request.scale, request.noise, since=time.time())
    except ScenarioError as exc:
        raise RequestValidationError(
            [{"type": "scenario", "loc": ("body", *exc.where), "msg": str(exc), "input": None}]
        ) from None
    sampler.set_scenario(scenario)
    state = scenario_state(publisher)
    log.info("scenario set: shift %s, scale %s, noise %s (std units)", state.shift, state.scale, state.noise)
    return state


@router.get("/scenario")
async def get_scenario(publisher: Publisher) -> ScenarioState:
    return scenario_state(publisher)


@router.delete("/scenario")
async def end_scenario(publisher: Publisher) -> ScenarioState:
    """The demo sends the data as it is again."""
    if publisher.sampler is not None:
        publisher.sampler.set_scenario(Scenario())
    log.info("scenario ended: the demo sends the data as it is")
    return scenario_state(publisher)
