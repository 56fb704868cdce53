"""The adoption report in a real headless Chromium: it renders, offline, quietly.

Driven over the DevTools protocol by tests/support/chromium.py (shared with `make
screenshot`), so no browser download is needed: Debian's ``chromium`` package is
enough. Chromium missing is a failure, not a skip: CI must run this (``make test``
installs it first: tests/support/ensure-chromium). ``ROLLOUT_TEST_CHROMIUM`` names
another binary.

Screenshots of the whole page and of each chart are saved in the test's
``tmp_path`` (pytest prints where on failure; ``--basetemp`` pins it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.core.plan import Plan
from rollout.report.reporting import ReportFiles
from tests.support.chromium import ChromiumMissing, DevTools, Page, chromium_binary
from tests.support.reports import AS_OF, HOSTILE_ORG, run_report


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    try:
        binary = chromium_binary()
    except ChromiumMissing as missing:
        pytest.fail(str(missing))
    tools = DevTools(binary, tmp_path_factory.mktemp("chromium"))
    try:
        yield tools
    finally:
        tools.close()


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


def test_chromium_keeps_its_temporary_files_in_the_tests_folder(browser: DevTools) -> None:
    """The profile's singleton socket lives in a folder of Chromium's temporary folder,
    which a terminated Chromium leaves behind: the test's own, not the system's."""
    socket = Path(os.readlink(browser.profile / "SingletonSocket"))
    assert socket.is_relative_to(browser.tmp)


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
    assert tables["table-reach"] == 2
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
