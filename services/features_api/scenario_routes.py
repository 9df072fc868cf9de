"""/features/scenario: what the demo sends from now on, by the schema's feature names
(services/features_api/sampler.py draws through it)."""

import logging
import time
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from services.features_api.deps import Publisher
from services.features_api.publisher import FeaturesPublisher
from services.features_api.sampler import (
    MAX_CONCEPT,
    MAX_NOISE,
    MAX_SCALE,
    MAX_SHIFT,
    MAX_TILT,
    Scenario,
    ScenarioError,
    scenario_for,
)

router = APIRouter(prefix="/features", tags=["features"])

log = logging.getLogger(__name__)

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
    tilt: dict[str, float] = Field(
        default_factory=dict,
        description=f"numeric: rows drawn with weight exp(tilt·z), z the feature in std units (±{MAX_TILT:g}): "
        "a covariate shift whose labels stay true",
    )
    concept: dict[str, float] = Field(
        default_factory=dict,
        description=f"numeric: the label gets concept·std(target)·z added (±{MAX_CONCEPT:g}): the labels' relation "
        "to the inputs changes, the inputs stay",
    )


class ScenarioState(BaseModel):
    active: bool = Field(description="whether what is sent differs from the data")
    since: float | None = Field(description="when the scenario was set (epoch s)")
    shift: dict[str, float | dict[str, float]]
    scale: dict[str, float]
    noise: dict[str, float]
    tilt: dict[str, float] = Field(default_factory=dict)
    concept: dict[str, float] = Field(default_factory=dict)
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
    scenario set before; the labels stay the data's unless ``concept`` changes them. ``DELETE`` ends it."""
    await publisher.follow_registration()
    sampler = publisher.sampler
    if sampler is None:
        raise HTTPException(503, detail=f"the demo has no rows to draw: {publisher.registration.current.unavailable}")
    try:
        scenario = scenario_for(
            sampler.schema,
            request.shift,
            request.scale,
            request.noise,
            since=time.time(),
            tilt=request.tilt,
            concept=request.concept,
        )
    except ScenarioError as exc:
        raise RequestValidationError(
            [{"type": "scenario", "loc": ("body", *exc.where), "msg": str(exc), "input": None}]
        ) from None
    sampler.set_scenario(scenario)
    state = scenario_state(publisher)
    log.info(
        "scenario set: shift %s, scale %s, noise %s, tilt %s, concept %s (std units)",
        state.shift, state.scale, state.noise, state.tilt, state.concept,
    )  # fmt: skip
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
