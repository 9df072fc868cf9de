"""model_api's routes: /predict, /predictions, /model/reload, /model/schema, /model/info, /drift."""

import time
from collections import Counter as Tally
from typing import Annotated, Any, cast

import sklearn
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from services.common.contracts.drift import DriftReport
from services.common.http.bodies import schema_rows
from services.common.http.direct import DirectRoute
from services.common.messages import ReportedPrediction
from services.model_api.bodies import (
    BatchPredictResponse,
    PredictRequest,
    PredictResponse,
    ReloadRefused,
    ReloadResponse,
    ReportedAccepted,
    ReportedRequest,
    Unpredictable,
)
from services.model_api.modelstore import ModelFileError
from services.model_api.service import ModelService, PredictJob, RefusedRows


async def get_service(request: Request) -> ModelService:
    return cast(ModelService, request.state.model)  # put there by the lifespan's state


Service = Annotated[ModelService, Depends(get_service)]
router = APIRouter(tags=["model"])


async def predict(body: PredictRequest, request: Request) -> PredictResponse | BatchPredictResponse:
    # A DirectRoute (services/common/http/direct.py, below): the request path of the user's application.
    service = await get_service(request)
    model = service.model
    if model.unservable is not None:
        raise HTTPException(503, detail=model.unservable)
    monitored = service.settings.MONITOR_HTTP_PREDICTIONS
    if monitored and (problem := service.link.problem()) is not None:
        raise HTTPException(503, detail=f"cannot monitor this prediction now, so it is not served: {problem}")
    one_row = "features" in body.model_fields_set
    bodies = [body.features] if one_row else body.instances
    rows = schema_rows(model.schema, bodies, lambda i: ("body", "features") if one_row else ("body", "instances", i))
    given: list[str | None] = [body.id] if one_row else [None] * len(rows)
    if body.ids is not None:
        given = [*body.ids]
    outcome = await service.serve(PredictJob(model, rows, given, body.tags))
    if isinstance(outcome, RefusedRows):
        service.drift.refuse("http", "unpredictable", len(outcome.rows))
        raise Unpredictable(
            [
                {
                    "type": "model_refused",
                    "loc": ("body", "features") if one_row else ("body", "instances", i),
                    "msg": f"model {model.version}: {why}",
                    "input": bodies[i],
                }
                for i, why in outcome.rows
            ]
        )
    if one_row:
        return PredictResponse(id=outcome.ids[0], prediction=outcome.values[0], model_version=model.version, monitored=monitored)
    return BatchPredictResponse(ids=outcome.ids, predictions=outcome.values, model_version=model.version, monitored=monitored)


router.add_api_route(
    "/predict",
    predict,
    methods=["POST"],
    route_class_override=DirectRoute,
    responses={
        400: {"description": "the body is not UTF-8 JSON"},
        422: {"description": "a row that does not fit the schema (the answer names the feature), or that the model refuses"},
        503: {
            "description": "no model file is registered (a profile of a model served elsewhere), or MONITOR_HTTP_PREDICTIONS "
            "is on and the broker is not connected: nothing was served"
        },
    },
)


@router.post(
    "/predictions",
    responses={
        422: {"description": "an item that does not fit (the answer names the item and the feature): nothing was taken"},
        503: {"description": "the broker is not connected: nothing was taken"},
    },
)
async def report_predictions(request: ReportedRequest, service: Service) -> ReportedAccepted:
    """Predictions a model served elsewhere made (your FastAPI app, a batch job, another model server):
    1 to 10,000 items, taken whole or refused whole. Each is published to y_pred, to be joined with its
    label (``POST :8001/labels``, whenever it is known); the features given feed drift as /predict's do.
    The answer comes once the broker has confirmed every one."""
    schema = service.model.schema
    described = [(i, item) for i, item in enumerate(request.predictions) if item.features is not None]
    rows = schema_rows(
        schema, [item.features for _, item in described], lambda k: ("body", "predictions", described[k][0], "features")
    )
    if (problem := service.link.problem()) is not None:
        raise HTTPException(503, detail=f"cannot publish now, nothing was taken: {problem}")
    checked: list[list[float | str | None] | None] = [None] * len(request.predictions)
    for (i, _), row in zip(described, rows, strict=True):
        checked[i] = row
    reported = [  # validated above, item by item: not again
        ReportedPrediction.model_construct(
            id=item.id,
            body=item.prediction,
            ts=item.ts,
            model_version=item.model_version,
            features=row,
            schema_id=None,
            tags=item.tags,
        )
        for item, row in zip(request.predictions, checked, strict=True)
    ]
    await service.report(reported, "reported_http")
    return ReportedAccepted(accepted=len(reported), with_features=len(described))


@router.post(
    "/model/reload",
    response_model=ReloadResponse,
    responses={409: {"model": ReloadRefused, "description": "the file was refused; the old model still serves"}},
)
async def reload_model(service: Service) -> ReloadResponse | JSONResponse:
    try:
        old, new = await service.reload()
    except ModelFileError as exc:
        return JSONResponse({"detail": str(exc), "model_version": service.model.version}, status_code=409)
    return ReloadResponse(
        model_version=new.version, previous_version=old.version, changed=new.version != old.version, warnings=list(new.warnings)
    )


@router.get("/model/schema")
async def model_schema(service: Service) -> dict[str, Any]:
    """The schema every features body is checked against: the features in order (the order of a list
    body), each numeric or categorical, with the categories the reference showed and the share missing."""
    model = service.model
    return {"model_version": model.version, "fingerprint": model.schema.fingerprint, **model.schema.to_json()}


@router.get("/model/info")
async def model_info(service: Service) -> dict[str, Any]:
    model = service.model
    return {
        **model.metadata,
        "served_here": model.predictor is not None,
        "unservable": model.unservable,
        "model_version": model.version,
        "model_path": str(model.path),
        "verified": model.verified,
        "sklearn_version_running": sklearn.__version__,
        "warnings": list(model.warnings),
        "loaded_at": model.loaded_at,
        "load_seconds": model.load_seconds,
        "predictions_served": sum(service.served.get(model.version, Tally()).values()),
        "predictions_by_version": {version: dict(paths) for version, paths in service.served.items()},
        "dead_lettered": service.consumer.dead_lettered,
        "estimate": {
            "available": model.estimate_problem is None,
            "unavailable_because": model.estimate_problem,
        },
    }


@router.get("/drift", response_model=DriftReport)
async def drift(service: Service) -> dict[str, Any]:
    """The last ``DRIFT_WINDOW_SIZE`` samples predicted for (of the last ``DRIFT_WINDOW_S`` seconds),
    per feature and for the prediction, against the model's reference: whether each drifted, its
    statistics and bins, and the data quality. docs/monitoring.md says how to read it."""
    return service.drift.report(time.time())
