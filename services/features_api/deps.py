"""What features_api's routes are handed: the publisher the lifespan put in the app's state."""

from typing import Annotated, cast

from fastapi import Depends, Request

from services.features_api.publisher import FeaturesPublisher


async def get_publisher(request: Request) -> FeaturesPublisher:
    return cast(FeaturesPublisher, request.state.features)  # put there by the lifespan's state


Publisher = Annotated[FeaturesPublisher, Depends(get_publisher)]
