"""The OpenAPI document (/docs) says what service_app answers besides the routes: the 4xx of a body,
which routes ask for the token, and the model's own features."""

from typing import Any

import httpx

from services.common.schema import DIABETES, FeatureSchema, FeatureSpec
from tests.unit.common.http.tiny_app import TOKEN, serve, tiny_app


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    return (await client.get("/openapi.json")).json()


def test_the_openapi_document_shows_which_routes_ask_for_the_token_and_the_4xx_of_a_body() -> None:
    protected = serve(tiny_app(API_TOKEN=TOKEN)[0], openapi)
    assert protected["components"]["securitySchemes"]["APIToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "the service's API_TOKEN; asked by every route that changes state",
    }
    paths = protected["paths"]
    assert paths["/orders"]["post"]["security"] == [{"APIToken": []}] and "401" in paths["/orders"]["post"]["responses"]
    assert "security" not in paths["/quote"]["post"] and "security" not in paths["/orders"]["get"]
    assert "security" not in paths["/health"]["get"]
    assert {"400", "413", "415", "422"} <= set(paths["/orders"]["post"]["responses"])
    assert "413" not in paths["/orders"]["get"]["responses"]
    open_ = serve(tiny_app()[0], openapi)
    assert "security" not in open_["paths"]["/orders"]["post"] and "securitySchemes" not in open_.get("components", {})


def test_a_features_body_is_documented_as_the_models_features_and_follows_the_model_in_service() -> None:
    house = FeatureSchema((FeatureSpec("sqft", "numeric"), FeatureSpec("city", "categorical", ("Paris", "Lyon"))))
    in_service = [DIABETES]
    app, _ = tiny_app(features_schema=lambda: in_service[0])

    async def before_and_after(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
        before = await openapi(client)
        in_service[0] = house  # another model registered
        return before, await openapi(client)

    before, after = serve(app, before_and_after)
    sample = before["components"]["schemas"]["Sample"]["properties"]["features"]
    assert sample == {"$ref": "#/components/schemas/Features"}
    assert list(before["components"]["schemas"]["Features"]["anyOf"][0]["properties"]) == ["age", "sex", "bmi", "bp"] + [
        f"s{i}" for i in range(1, 7)
    ]
    assert list(after["components"]["schemas"]["Features"]["anyOf"][0]["properties"]) == ["sqft", "city"]
