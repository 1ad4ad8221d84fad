"""Render an eval run's `report.html` (written by `lorafleet eval run`) in Debian's chromium and save a PNG.

The README's `docs/img/eval-report.png` comes from the demo's real run:

    .venv/bin/python -m tests.report_screenshot \
        .lorafleet/demo/eval/support-intents/report.html docs/img/eval-report.png

`tests/integration/test_readme.py` calls `screenshot_report` on the report of its own run, so this
path stays exercised.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# root needs --no-sandbox; the rest keeps chromium off the network (the report is self-contained).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@dataclass(frozen=True)
class Rendered:
    """What the browser saw: enough for a test to tell a real report from a blank page."""

    title: str
    charts: int
    bars: int
    score_rows: int
    height: int


def screenshot_report(report: Path, png: Path, *, width: int = 1280, max_height: int = 1500) -> Rendered:
    """Open `report` from disk, screenshot its top (scores, charts, gates, usage) into `png`."""
    from playwright.sync_api import sync_playwright

    png.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.goto(report.resolve().as_uri())
            height = int(page.evaluate("document.documentElement.scrollHeight"))
            rendered = Rendered(
                title=page.title(),
                charts=page.locator(".chart svg").count(),
                bars=page.locator(".chart svg rect").count(),
                score_rows=page.locator("table").first.locator("tr").count() - 1,
                height=height,
            )
            page.screenshot(path=str(png), full_page=True,
                            clip={"x": 0, "y": 0, "width": width, "height": min(height, max_height)})
        finally:
            browser.close()
    return rendered


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.report_screenshot REPORT.html OUT.png")
    print(screenshot_report(Path(sys.argv[1]), Path(sys.argv[2])))
