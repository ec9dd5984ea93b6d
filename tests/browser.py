"""The browser tests' fixtures: Debian's Chromium through Python Playwright, and servers.

conftest.py imports the fixtures, so any test file can ask for ``browser``, ``pages`` or
``start_server``. Browsers are never downloaded: without chromium or playwright the
tests skip, unless ARCHIVER_REQUIRE_E2E=1 (CI), where they fail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Server, settings_of, unavailable

try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - reported by the browser fixture
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GRACE = 0.2
WAIT_MS = 15_000
DESKTOP = {"width": 900, "height": 640}
# What a browser test's server runs with (under the ARCHIVER_* a test passes): a short
# grace, no sweep or timeout within a test, and the service's own fsync default.
BROWSER_SETTINGS = {
    "disconnect_grace": str(GRACE),
    "session_timeout": "3600",
    "sweep_interval": "3600",
    "ping_interval": "5",
    "shutdown_timeout": "5",
    "echo_delay": "0.05",
    "fsync": "everysec",
}


def _browser_missing() -> str | None:
    if sync_playwright is None:
        return "Python Playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return (
            "no browser at /usr/bin/chromium: install Debian's chromium (apt-get install chromium)"
        )
    return None


@pytest.fixture
def start_server(
    tmp_path: Path, make_server: Callable[..., Server]
) -> Iterator[Callable[..., Server]]:
    """``start_server(ARCHIVER_ECHO_DELAY="0.12")``: a started server with its own data
    directory, on the browser tests' settings (conftest's ``make_server`` stops it)."""
    count = 0

    def start(**env: str) -> Server:
        nonlocal count
        count += 1
        data = tmp_path / f"server{count - 1}" / "data"
        data.parent.mkdir(parents=True, exist_ok=True)
        return make_server(data=data, **{**BROWSER_SETTINGS, **settings_of(env)})

    yield start


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = _browser_missing()
    if missing:
        unavailable(missing)
    assert sync_playwright is not None
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except Exception as exc:  # a broken install is as good as a missing one
            unavailable(f"could not launch /usr/bin/chromium: {exc}")
        expect.set_options(timeout=WAIT_MS)
        yield launched
        launched.close()


class Pages:
    """New contexts and pages for one test; collects console errors and closes it all."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.console: list[str] = []

    def context(self, **options: Any) -> BrowserContext:
        options.setdefault("viewport", DESKTOP)
        context = self.browser.new_context(**options)
        context.set_default_timeout(WAIT_MS)
        self.contexts.append(context)
        return context

    def page(self, context: BrowserContext | None = None, **options: Any) -> Page:
        page = (context or self.context(**options)).new_page()
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        return page

    def close(self) -> None:
        for context in self.contexts:
            with contextlib.suppress(Exception):
                context.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    p = Pages(browser)
    yield p
    p.close()
    if p.console:
        print("---- browser console ----\n" + "\n".join(p.console))
