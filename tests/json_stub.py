"""A stand-in HTTP peer for tests: a tiny JSON server on 127.0.0.1, in a thread."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JsonStub:
    """A tiny HTTP server on 127.0.0.1, a stand-in peer for a test: ``GET path`` answers
    ``status`` with ``body`` as JSON (both may be changed while it runs), ``POST path``
    records the JSON it was sent in ``posted`` and answers 204; ``GET`` of a path in ``more``
    answers 200 with its body; anything else is a 404."""

    def __init__(self, path: str, body: Any = None, status: int = 200, more: dict[str, Any] | None = None) -> None:
        self.path, self.body, self.status = path, body, status
        self.more = more or {}
        self.posted: list[Any] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path in stub.more:
                    payload = json.dumps(stub.more[self.path]).encode()
                    self.send_response(200)
                else:
                    payload = json.dumps(stub.body).encode()
                    self.send_response(stub.status if self.path == stub.path else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path == stub.path:
                    stub.posted.append(json.loads(body))
                self.send_response(204 if self.path == stub.path else 404)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="json-stub")

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def __enter__(self) -> "JsonStub":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
