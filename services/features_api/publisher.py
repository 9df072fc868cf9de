"""features_api's publisher: draws the demo's samples and publishes each one's features and label
under one id, both confirmed; on a timer (the demo loop, pausable) and in bursts."""

import asyncio
import logging
import random

from fastapi import HTTPException
from prometheus_client import Counter

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
from services.common.messages import FeaturesMessage, LabelMessage, ReportedPrediction, SampleIdClock
from services.common.settings import Settings
from services.features_api.demo import RegistrationWatch
from services.features_api.sampler import (
    ReferenceSampler,
    Sample,
)
from services.features_api.state import load_paused, save_paused

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
