"""Browser tests: the review app served by uvicorn on a free loopback port, driven by Debian's chromium."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from lorafleet.human_review.app import create_app
from lorafleet.human_review.settings import ReviewSettings
from pydantic import SecretStr

from tests.unit.human_review.pg import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ADMIN_TOKEN = "rva_browser_admin"


class LiveServer:
    def __init__(self, settings: ReviewSettings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("review app did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def api(self, method: str, path: str, **kw) -> httpx.Response:  # noqa: ANN003
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kw)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("review")
    settings = ReviewSettings(data_dir=data, review_admin_token=SecretStr(ADMIN_TOKEN), lease_seconds=120)
    with LiveServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium not installed: run scripts/system-deps.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser) -> Iterator[object]:  # noqa: ANN001
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    yield pg
    context.close()
