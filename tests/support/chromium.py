"""Headless Chromium driven over the DevTools protocol, with a small websocket client
(``websockets`` comes with prefect), so no browser download is needed: Debian's
``chromium`` package is enough. ``ROLLOUT_TEST_CHROMIUM`` names another binary.

Used by tests/test_report_browser.py and by tests/support/screenshot.py (``make
screenshot``). Nothing here imports pytest: a missing binary raises ChromiumMissing, a
browser that misbehaves raises AssertionError.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.support.processes import die_with_parent

INSTALL_HINT = (
    "the browser test and `make screenshot` need Chromium: install it with "
    "`apt-get install -y chromium` (Debian; `chromium-browser` on Ubuntu) or set "
    "ROLLOUT_TEST_CHROMIUM to a Chrome or Chromium binary"
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
    # Belt and braces: should the page ask for any host, no name resolves.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-port=0",
)
WIDTH = 1280


class ChromiumMissing(RuntimeError):
    """No Chromium binary to run (the message says how to install one)."""


def chromium_binary() -> str:
    configured = os.environ.get("ROLLOUT_TEST_CHROMIUM")
    if configured:
        if not (shutil.which(configured) or Path(configured).is_file()):
            raise ChromiumMissing(
                f"ROLLOUT_TEST_CHROMIUM={configured} does not exist; {INSTALL_HINT}"
            )
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumMissing(INSTALL_HINT)


class DevTools:
    """A Chromium process and its DevTools websocket: commands, and the events seen."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.profile = workdir / "profile"
        self.profile.mkdir(parents=True)
        # Its own temporary files (the profile's singleton socket folder, which a
        # terminated Chromium leaves) under ``workdir``: in the system's, one stayed
        # behind per run of the suite.
        self.tmp = workdir / "tmp"
        self.tmp.mkdir()
        self.log_path = workdir / "chromium.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TMPDIR": str(self.tmp)},
            preexec_fn=die_with_parent,
        )
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        try:
            self.ws: ClientConnection = connect(
                self._browser_url(), max_size=None, proxy=None, open_timeout=30
            )
        except BaseException:
            self.close()
            raise

    def _browser_url(self) -> str:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"chromium exited with {self.process.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            if port_file.exists():
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise AssertionError(f"chromium did not open its DevTools port in 30 s ({self.log_path})")

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + 30
        while True:
            reply = self._receive(deadline - time.monotonic())
            if reply is None:
                raise AssertionError(f"no answer to {method} in 30 s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        try:
            message = json.loads(self.ws.recv(timeout=max(timeout, 0.001)))
        except TimeoutError:
            return None
        if "method" in message:
            self.events.append(message)
        return message

    def wait_for(self, method: str, session: str, timeout: float = 30) -> dict[str, Any]:
        seen = len(self.events)
        for event in self.events:
            if event["method"] == method and event.get("sessionId") == session:
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())
            for event in self.events[seen:]:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
        raise AssertionError(f"no {method} in {timeout} s")

    def settle(self, seconds: float) -> None:
        """Collect events for a while: a late fetch or console message must show up too."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


class Page:
    """One tab that opened a URL, and everything it did."""

    def __init__(self, browser: DevTools, url: str, height: int = 900) -> None:
        self.browser = browser
        self.url = url
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.target = target
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        self.first_event = len(browser.events)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.resize(WIDTH, height)
        navigation = self.send("Page.navigate", {"url": url})
        if "errorText" in navigation:
            raise AssertionError(f"could not open {url}: {navigation}")
        browser.wait_for("Page.loadEventFired", self.session)
        browser.settle(1.0)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session)

    def resize(self, width: int, height: int) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
        )

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(result["exceptionDetails"])
        return result["result"].get("value")

    def events(self, *methods: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.browser.events[self.first_event :]
            if e.get("sessionId") == self.session and e["method"] in methods
        ]

    def screenshot(self, path: Path, clip: dict[str, float] | None = None) -> Path:
        """A PNG of the clip (CSS pixels from the top of the page), or of the whole page."""
        if clip is None:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"]}
        shot = self.send(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}},
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})
