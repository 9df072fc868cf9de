"""features_api: publishes samples (features and label under one id) on a timer and on demand, drawn
from the registered model's reference (services/features_api/demo.py); for a model served
elsewhere, the prediction the reference recorded goes with the features to ``predictions``.
The app wires the publisher (publisher.py), the demo's routes (routes.py, scenario_routes.py) and
the callers' own data (intake.py)."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI

from services.common.amqp.link import Link
from services.common.http.app import service_app
from services.common.settings import Settings, get_settings
from services.features_api import intake, scenario_routes
from services.features_api.demo import RegistrationWatch
from services.features_api.intake import CallerIntake
from services.features_api.publisher import FeaturesPublisher
from services.features_api.routes import router


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
    app.include_router(scenario_routes.router)
    app.include_router(intake.router)
    return app
