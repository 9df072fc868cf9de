"""Headless Chromium, driven over its DevTools protocol (JSON on a websocket): enough to load a
page, evaluate JavaScript in it and take a screenshot, with no driver or browser download.

Uses Debian's ``chromium`` package (``make test`` installs it when missing and run as root).
"""

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

WIDTH, HEIGHT = 1366, 768  # a common laptop screen
CANDIDATES = ("chromium", "chromium-browser")


class BrowserError(Exception):
    pass


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), *CANDIDATES):
        if name and (found := shutil.which(name)):
            return found
    return None


class Page:
    """One tab. Events that arrive while waiting for an answer are kept in ``events``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._next_id = 0

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        ask = self._next_id
        self.ws.send(json.dumps({"id": ask, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("id") == ask:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message["result"]
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params |= {
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            }
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))
        return path

    def exceptions(self) -> list[str]:
        """Uncaught JavaScript exceptions so far."""
        self.evaluate("0")  # collects events that arrived since the last call
        return [str(e["params"]["exceptionDetails"]) for e in self.events if e["method"] == "Runtime.exceptionThrown"]

    def requested_urls(self) -> list[str]:
        self.evaluate("0")
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]


class Chromium:
    """``with Chromium(profile_dir) as browser: page = browser.open(url)``; its output goes to
    ``profile_dir/chromium.log``. It runs in a session of its own, stopped as a group."""

    def __init__(self, profile_dir: Path) -> None:
        self.profile_dir = profile_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._pages = contextlib.ExitStack()

    def __enter__(self) -> "Chromium":
        executable = find_chromium()
        if executable is None:
            raise BrowserError(
                "no chromium on PATH: install Debian's package (apt-get install -y chromium; "
                "`make test` does it when run as root) or set CHROMIUM to the browser"
            )
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        log = (self.profile_dir / "chromium.log").open("ab")
        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={self.profile_dir / 'profile'}",
                f"--window-size={WIDTH},{HEIGHT}",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "about:blank",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            self.port = self._wait_for_port()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_for_port(self, timeout: float = 60) -> int:
        """Chromium writes the port it chose (``--remote-debugging-port=0``) to DevToolsActivePort."""
        active = self.profile_dir / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with {self.process.returncode}: {self.log()[-2000:]}")
            if active.exists() and (lines := active.read_text().splitlines()):
                return int(lines[0])
            time.sleep(0.1)
        raise BrowserError(f"chromium did not open its DevTools port within {timeout}s: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.profile_dir / "chromium.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def open(self, url: str) -> Page:
        """A new tab at a laptop's screen size, with ``url`` loaded."""
        target = httpx.put(f"http://127.0.0.1:{self.port}/json/new?about:blank", timeout=10).json()
        page = Page(self._pages.enter_context(connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10)))
        page.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        for domain in ("Page", "Runtime", "Network"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while page.evaluate("document.readyState === 'complete' && location.href") != url:
            if time.monotonic() > deadline:
                raise BrowserError(f"{url} did not finish loading within 30 s")
            time.sleep(0.05)
        return page

    def close(self) -> None:
        self._pages.close()
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __exit__(self, *_exc: object) -> None:
        self.close()
