"""The four services as real processes (uvicorn, the real broker), with an API token, sent a smaller
table of hostile requests than tests/unit/test_every_route.py — over real sockets, chunked bodies
and malformed requests included: no 5xx, every service still healthy, no traceback in any log."""

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.pipeline import Pipeline, running_pipeline
from harness.processes import SERVICES
from services.common.settings import Settings

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TOKEN = "real-processes-token-0123456789"
JSON = "application/json"
OVER_THE_LIMIT = Settings.model_fields["HTTP_BODY_MAX_BYTES"].default + 1024 * 1024  # a MiB over the default
BODIES: list[tuple[str, bytes | None, str | None]] = [
    ("no content type", b'{"count": 2}', None),
    ("form (plain curl -d)", b'{"count": 2}', "application/x-www-form-urlencoded"),
    ("invalid UTF-8", b'{"count": "\xff"}', JSON),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, JSON),
    ("NaN", b'{"count": NaN, "features": [NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]}', JSON),
    ("wrong shape", b'{"count": "3", "features": true}', JSON),
    ("over the size limit", b'{"pad": "' + b"x" * OVER_THE_LIMIT + b'"}', JSON),
]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, model_path: Path, amqp_url: str) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path_factory.mktemp("hostile"), model_path, amqp_url, API_TOKEN=TOKEN) as running:
        yield running  # leaving checks that each stopped cleanly, without a traceback


def operations(url: str) -> list[tuple[str, str, bool]]:
    """(method, path, whether it takes a body) of each route in the service's OpenAPI document."""
    schema: dict[str, Any] = httpx.get(f"{url}/openapi.json").json()
    return [
        (method.upper(), path.replace("{image}", "latest.png"), "requestBody" in operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def chunked(body: bytes) -> Iterator[bytes]:
    """No Content-Length: the size is known only as the chunks come."""
    for start in range(0, len(body), 256 * 1024):
        yield body[start : start + 256 * 1024]


@pytest.mark.parametrize("service", SERVICES)
def test_no_hostile_request_gets_a_5xx_from_a_real_process(pipeline: Pipeline, service: str) -> None:
    url = pipeline.url(service)
    failures, sent = [], 0
    with httpx.Client(base_url=url, timeout=30, headers=pipeline.auth) as client:
        for method, path, takes_a_body in operations(url):
            for name, body, kind in BODIES:
                answer = client.request(method, path, content=body, headers={"content-type": kind} if kind else {})
                sent += 1
                if answer.status_code >= 500:
                    failures.append(f"{method} {path} with {name}: {answer.status_code} {answer.text[:200]}")
            if takes_a_body:  # a route that reads no body never sees its size
                streamed = client.request(
                    method, path, content=chunked(b'{"pad": "' + b"x" * OVER_THE_LIMIT + b'"}'), headers={"content-type": JSON}
                )
                sent += 1
                if streamed.status_code != 413:
                    failures.append(f"{method} {path} with a chunked body over the limit: {streamed.status_code}")
    assert sent > 10 and not failures, "\n".join(failures)
    assert httpx.get(f"{url}/health").status_code == 200


def urllib_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """What Python's urllib gets: it sends the whole body (and Connection: close) before it reads."""
    request = urllib.request.Request(url, data=body, headers={"content-type": JSON, **headers})  # noqa: S310 (http://127.0.0.1)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 (http://127.0.0.1)
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def socket_post_chunked(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """A raw socket: the whole body chunked, then Connection: close, and only then reads."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {JSON}\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(head.encode())
        for chunk in chunked(body):
            connection.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        connection.sendall(b"0\r\n\r\n")
        answer = b""
        while piece := connection.recv(65536):
            answer += piece
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("client", ["urllib", "raw socket, chunked"])
def test_a_client_that_sends_its_whole_body_before_reading_gets_the_413_and_why(pipeline: Pipeline, client: str) -> None:
    """The 413 is sent before the body is read; a server that then closes with the rest of the body unread makes
    the kernel reset the connection, and a client still sending never reads the 413 (urllib said "Connection
    reset by peer"). The rest is read and dropped first, as nginx does."""
    body = b'{"pad": "' + b"x" * OVER_THE_LIMIT + b'"}'
    if client == "urllib":
        status, detail = urllib_post(f"{pipeline.url('features_api')}/features/publish", body, pipeline.auth)
    else:
        status, detail = socket_post_chunked(pipeline.services["features_api"].port, "/features/publish", body, pipeline.auth)
    assert status == 413, (status, detail[:200])
    assert "HTTP_BODY_MAX_BYTES" in json.loads(detail)["detail"]
    assert httpx.get(f"{pipeline.url('features_api')}/health").status_code == 200


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        return connection.recv(4096)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /features/publish HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /features/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{}",
        b"GARBAGE\r\n\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["length not a number", "length absurd", "no request line", "70 kB path"],
)
def test_a_malformed_request_is_refused_and_the_service_carries_on(pipeline: Pipeline, request_bytes: bytes) -> None:
    port = pipeline.services["features_api"].port
    status_line = raw_request(port, request_bytes).split(b"\r\n", 1)[0]
    assert status_line == b"" or status_line.split()[1][:1] == b"4", status_line
    assert httpx.get(f"{pipeline.url('features_api')}/health").status_code == 200


def test_the_token_is_asked_for_by_real_processes_and_never_logged(pipeline: Pipeline) -> None:
    publish = f"{pipeline.url('features_api')}/features/publish"
    assert httpx.post(publish, json={"count": 1}).status_code == 401
    assert httpx.post(publish, json={"count": 1}, headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert len(pipeline.burst(3)) == 3  # the harness sends the pipeline's token
    assert httpx.post(f"{pipeline.url('model_api')}/model/reload").status_code == 401
    assert httpx.get(f"{pipeline.url('metric_api')}/metrics/summary").status_code == 200
    for service in pipeline.services.values():
        assert TOKEN not in service.output()
