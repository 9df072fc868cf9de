"""features_api's demo routes: /features/status, /features/publish, /features/pause and /resume."""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from pydantic import AfterValidator, BaseModel, Field

from services.common.http.bodies import StrictBody
from services.features_api.deps import Publisher
from services.features_api.publisher import MAX_BURST, FeaturesPublisher
from services.features_api.state import StateFileError


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
