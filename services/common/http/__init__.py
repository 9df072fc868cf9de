"""What every service's HTTP side shares, one job a module; ``service_app`` applies all of it to
every route, those added later included.

- ``app``         ``service_app``: a service's FastAPI app with everything below wired in
- ``bodies``      ``StrictBody`` (JSON types as they are) and ``schema_rows`` (features that do not
                  fit the model's schema: a 422 naming them)
- ``ops``         ``GET /health`` (200, or 503 with the reason) and ``GET /metrics`` (Prometheus text)
- ``excerpt``     a bad input cut to what a 4xx may quote
- ``errors``      the 415, 400 and 422 that say what is wrong with a body, whatever was sent
- ``body_limit``  ``BodyLimit``: a body over ``HTTP_BODY_MAX_BYTES`` is a 413 before it is read, and
                  the rest is drained so that a client still sending reads it
- ``token``       ``API_TOKEN``: which routes ask for it (``CHANGES_NOTHING`` opts out), and the check
- ``head``        ``HEAD`` on every ``GET`` route
- ``openapi``     what the OpenAPI document (/docs) adds: the 4xx of a body, the token, the model's features
- ``serve``       running a service: its log lines and uvicorn
"""
