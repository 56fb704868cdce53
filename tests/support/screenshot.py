"""`make screenshot`: docs/report.png, the top of the demo's adoption report in Chromium.

Opens ``$ROLLOUT_HOME/reports/2022-05-10/adoption.html`` (``var/`` by default: what
``make demo`` writes) in headless Chromium at 1280 CSS pixels wide and saves the top
of the page, from the title through the first two charts (adoption over time, 2FA
methods), as a PNG. Exit 2 with a hint when there is no demo report yet.

    python -m tests.support.screenshot [--home DIR] [--out docs/report.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from tests.support.chromium import WIDTH, ChromiumMissing, DevTools, Page, chromium_binary

ROOT = Path(__file__).resolve().parents[2]
REPORT = Path("reports", "2022-05-10", "adoption.html")
# The shot ends below this element (the second chart), and is never taller than
# MAX_HEIGHT CSS pixels, to keep the PNG small.
LAST = "#chart-methods"
MARGIN = 24
MAX_HEIGHT = 1500


def capture(report: Path, out: Path) -> tuple[int, int]:
    with tempfile.TemporaryDirectory(prefix="rollout-screenshot-") as workdir:
        browser = DevTools(chromium_binary(), Path(workdir))
        try:
            page = Page(browser, report.resolve().as_uri())
            box = page.evaluate(
                f"(e => e && JSON.stringify(e.getBoundingClientRect()))"
                f"(document.querySelector('{LAST}'))"
            )
            bottom = json.loads(box)["bottom"] + MARGIN if box else MAX_HEIGHT
            height = int(min(bottom, MAX_HEIGHT))
            page.screenshot(out, {"x": 0, "y": 0, "width": WIDTH, "height": height})
            page.close()
        finally:
            browser.close()
    return WIDTH, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("ROLLOUT_HOME") or ROOT / "var"),
        help="the demo's home (default $ROLLOUT_HOME, else var/)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    args = parser.parse_args(argv)
    report = args.home / REPORT
    if not report.is_file():
        print(f"no demo report at {report}: run `make demo` first", file=sys.stderr)
        return 2
    try:
        width, height = capture(report, args.out)
    except ChromiumMissing as missing:
        print(missing, file=sys.stderr)
        return 1
    size = args.out.stat().st_size
    print(f"{args.out}: {width}x{height} px, {size // 1024} KB, from {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
