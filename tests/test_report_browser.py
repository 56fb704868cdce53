"""The adoption report in a real headless Chromium: it renders, offline, quietly.

Driven over the DevTools protocol with a small websocket client (``websockets`` comes
with prefect), so no browser download is needed: Debian's ``chromium`` package is
enough. Chromium missing is a failure, not a skip: CI must run this (``make test``
installs it first: tests/support/ensure-chromium). ``ROLLOUT_TEST_CHROMIUM`` names
another binary.

Screenshots of the whole page and of each chart are saved in the test's
``tmp_path`` (pytest prints where on failure; ``--basetemp`` pins it).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from rollout.plan import Plan, load_plan
from rollout.reporting import ReportFiles
from tests.test_reporting import AS_OF, HOSTILE_ORG, PLAN_PATH, run_report

INSTALL_HINT = (
    "the browser test needs Chromium: install it with `apt-get install -y chromium` "
    "(Debian; `chromium-browser` on Ubuntu) or set ROLLOUT_TEST_CHROMIUM to a Chrome or "
    "Chromium binary"
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


def chromium_binary() -> str:
    configured = os.environ.get("ROLLOUT_TEST_CHROMIUM")
    if configured:
        if not (shutil.which(configured) or Path(configured).is_file()):
            pytest.fail(f"ROLLOUT_TEST_CHROMIUM={configured} does not exist; {INSTALL_HINT}")
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(INSTALL_HINT)


class DevTools:
    """A Chromium process and its DevTools websocket: commands, and the events seen."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.profile = workdir / "profile"
        self.profile.mkdir(parents=True)
        self.log_path = workdir / "chromium.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
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


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    tools = DevTools(chromium_binary(), tmp_path_factory.mktemp("chromium"))
    try:
        yield tools
    finally:
        tools.close()


@pytest.fixture(scope="module")
def plan() -> Plan:
    return load_plan(PLAN_PATH)


class Page:
    """One tab that opened the report, and everything it did."""

    def __init__(self, browser: DevTools, url: str) -> None:
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
        self.resize(WIDTH, 900)
        navigation = self.send("Page.navigate", {"url": url})
        assert "errorText" not in navigation, navigation
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
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def events(self, *methods: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.browser.events[self.first_event :]
            if e.get("sessionId") == self.session and e["method"] in methods
        ]

    def screenshot(self, path: Path, clip: dict[str, float] | None = None) -> Path:
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


def open_report(browser: DevTools, report: ReportFiles) -> Iterator[Page]:
    page = Page(browser, report.html.resolve().as_uri())
    try:
        yield page
    finally:
        page.close()


@pytest.fixture
def full_page(browser: DevTools, tmp_path: Path, plan: Plan) -> Iterator[Page]:
    yield from open_report(browser, run_report(tmp_path, plan))


@pytest.fixture
def empty_page(browser: DevTools, tmp_path: Path, plan: Plan) -> Iterator[Page]:
    yield from open_report(browser, run_report(tmp_path, plan, empty=True))


def assert_quiet_and_offline(page: Page) -> None:
    """No console message of error or warning level, no exception, no fetch but the page."""
    problems = [
        e["params"]["entry"]
        for e in page.events("Log.entryAdded")
        if e["params"]["entry"]["level"] in ("error", "warning")
    ]
    problems += [
        e["params"]
        for e in page.events("Runtime.consoleAPICalled")
        if e["params"]["type"] in ("error", "warning", "assert")
    ]
    problems += [e["params"] for e in page.events("Runtime.exceptionThrown")]
    assert problems == []
    requested = [e["params"]["request"]["url"] for e in page.events("Network.requestWillBeSent")]
    assert requested == [page.url]
    assert page.events("Network.loadingFailed") == []
    assert page.events("Page.loadEventFired")


CHARTS_JS = """JSON.stringify([...document.querySelectorAll('svg')].map(svg => {
  const box = svg.getBoundingClientRect();
  const labelled = (svg.getAttribute('aria-labelledby') || '').split(' ').filter(Boolean);
  return {
    id: svg.id, width: box.width, height: box.height, role: svg.getAttribute('role'),
    name: labelled.map(id => (document.getElementById(id) || {}).textContent || null),
    texts: svg.querySelectorAll('text').length,
    milestones: [...svg.querySelectorAll('.milestone-label')].map(t => t.textContent),
    noData: svg.querySelectorAll('.no-data').length,
  };
}))"""


def charts(page: Page) -> list[dict[str, Any]]:
    return json.loads(page.evaluate(CHARTS_JS))


def test_the_report_renders_offline_in_chromium(full_page: Page, tmp_path: Path) -> None:
    page = full_page
    screenshot = page.screenshot(tmp_path / "adoption.png")
    print(f"screenshot: {screenshot}")
    dom = page.evaluate("document.documentElement.outerHTML")
    (tmp_path / "dom.html").write_text(dom)

    assert_quiet_and_offline(page)
    assert page.evaluate("document.title") == f"2FA adoption: plan npm-2022, as of {AS_OF}"
    assert page.evaluate("document.scripts.length") == 0
    assert dom.count("<svg") == 4

    found = charts(page)
    assert [c["id"] for c in found] == [
        "chart-adoption",
        "chart-methods",
        "chart-brownouts",
        "chart-funnel",
    ]
    for chart in found:
        assert chart["role"] == "img"
        assert all(chart["name"]) and len(chart["name"]) == 2, chart  # title + desc
        assert chart["width"] > 600 and chart["height"] > 100, chart
        assert chart["texts"] > 5 and chart["noData"] == 0, chart
        box = page.evaluate(
            f"JSON.stringify(document.getElementById('{chart['id']}').getBoundingClientRect())"
        )
        rect = json.loads(box)
        page.screenshot(
            tmp_path / f"{chart['id']}.png",
            {
                "x": rect["x"],
                "y": rect["y"] + page.evaluate("window.scrollY"),
                "width": rect["width"],
                "height": rect["height"],
            },
        )
    milestones = " | ".join(found[0]["milestones"])
    for label in ("top-100 notices", "brownout-1", "ELV for all", "high-impact enforced"):
        assert label in milestones

    tables = json.loads(
        page.evaluate(
            "JSON.stringify(Object.fromEntries([...document.querySelectorAll('table')]"
            ".map(t => [t.id, t.tBodies[0].rows.length])))"
        )
    )
    assert tables["table-orgs"] == 20
    assert tables["table-funnel"] == 2
    assert tables["table-tokens"] == 2
    assert tables["table-brownouts"] == 4
    assert tables["table-ledger"] >= 1 and tables["table-milestones"] >= 10
    # A hostile org name shows as text, and made no element.
    assert page.evaluate("document.querySelector('#table-orgs tbody th').textContent") == (
        HOSTILE_ORG
    )
    assert page.evaluate("document.querySelectorAll('main b, main script').length") == 0
    # Nothing sticks out sideways, on a laptop or a phone.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.resize(390, 844)
    page.browser.settle(0.3)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(tmp_path / "adoption-phone.png")
    assert_quiet_and_offline(page)


def test_an_empty_report_renders_too(empty_page: Page, tmp_path: Path) -> None:
    page = empty_page
    page.screenshot(tmp_path / "adoption-empty.png")
    assert_quiet_and_offline(page)
    found = charts(page)
    assert len(found) == 4
    assert all(c["noData"] >= 1 and c["width"] > 600 for c in found), found
    assert "ELV for all" in " | ".join(found[0]["milestones"])
