"""What a service's OpenAPI document (/docs) says besides its routes' own: the 400, 413 and 415 of
a route with a body; with a token set, the bearer scheme and, on the routes that ask for it, the
lock and the 401; the model's features by name and kind where a route takes them."""

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder

from services.common.http.token import BEARER, asks_for_token
from services.common.messages import FEATURES_SCHEMA_MARK
from services.common.schema import FeatureSchema

BODY_ANSWERS = {
    "413": {"description": "the body is larger than HTTP_BODY_MAX_BYTES"},
    "415": {"description": "the body was not sent as JSON (Content-Type: application/json)"},
    "400": {"description": "the body cannot be read as JSON (not UTF-8, nested too deeply)"},
}
TOKEN_ANSWER = {"description": "no Authorization: Bearer <API_TOKEN>, or another token"}


def document(app: FastAPI, *, protected: bool, features_schema: Callable[[], FeatureSchema] | None = None) -> None:
    """Make ``app.openapi`` add all of it to FastAPI's document; made again when another features
    schema is in service (a model registered since)."""
    made = app.openapi
    made_for: list[str] = []  # the fingerprint of the schema the cached document shows

    def openapi() -> dict[str, Any]:
        fingerprint = features_schema().fingerprint if features_schema is not None else ""
        if app.openapi_schema is not None and made_for == [fingerprint]:
            return app.openapi_schema
        app.openapi_schema = None
        schema = made()
        if features_schema is not None:
            show_features(schema, features_schema())
        made_for[:] = [fingerprint]
        for path in schema.get("paths", {}).values():
            for method, operation in path.items():
                responses = operation.setdefault("responses", {})
                if "requestBody" in operation:
                    for status, answer in BODY_ANSWERS.items():
                        responses.setdefault(status, answer)
                if protected and asks_for_token(method, operation):
                    operation["security"] = [{BEARER.scheme_name: []}]
                    responses.setdefault("401", TOKEN_ANSWER)
        if protected:
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes[BEARER.scheme_name] = jsonable_encoder(BEARER.model, by_alias=True, exclude_none=True)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to change the document


def show_features(document: dict[str, Any], schema: FeatureSchema) -> None:
    """Every features body in ``document`` (marked FEATURES_SCHEMA_MARK) becomes a reference to the
    model's features, described once under components/schemas/Features."""

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get(FEATURES_SCHEMA_MARK):
                return {"$ref": "#/components/schemas/Features"}
            return {key: visit(value) for key, value in node.items()}
        if isinstance(node, list):
            return [visit(item) for item in node]
        return node

    document["paths"] = visit(document.get("paths", {}))
    components = document.setdefault("components", {})
    components["schemas"] = visit(components.get("schemas", {}))
    components["schemas"]["Features"] = schema.json_schema()
