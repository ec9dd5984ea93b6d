"""The widget and the review page in a real headless Chromium against a live `archiver serve`.

Every test starts its own server subprocess on a free loopback port, with its own data
directory and an environment built from scratch (PATH, HOME and ARCHIVER_* only), and drives
Debian's /usr/bin/chromium through Python Playwright. Browsers are never downloaded: without
chromium or playwright the tests skip, unless ARCHIVER_REQUIRE_E2E=1 (CI), where they fail.

Waiting is always for a condition (Playwright's expect/wait_for, or polling the filesystem
against a deadline). The one exception is asserting that something does *not* happen (closing
one of two tabs archives nothing): that needs an observation window, several grace periods long.

Screenshots of the widget mid-reply and of the review page are saved under the test's tmp
dir; a copy goes to docs/screenshots/ (for README.md and docs/widget.md) when missing there or when
ARCHIVER_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import browser as fixtures
from tests.browser import DESKTOP, GRACE, Pages
from tests.helpers import Server, free_port, mint, wait_for

with contextlib.suppress(ImportError):  # without playwright the browser fixture skips
    from playwright.sync_api import Page, expect

# The fixtures live in tests/browser.py now (conftest.py serves them to every file); these
# names stay importable from here for the files that import them from this module.
browser, pages, start_server = fixtures.browser, fixtures.pages, fixtures.start_server

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "docs" / "screenshots"
UPDATE_SCREENSHOTS = os.environ.get("ARCHIVER_UPDATE_SCREENSHOTS") == "1"

pytestmark = pytest.mark.timeout(180)


# ---- helpers --------------------------------------------------------------------------------


def open_chat(page: Page, url: str) -> Page:
    page.goto(url)
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    return page


def send(page: Page, text: str) -> None:
    page.locator("#input").fill(text)
    page.locator("#input").press("Enter")


def bubbles(page: Page, role: str) -> Any:
    return page.locator(f"#log .msg[data-role={role}]")


def finished(page: Page) -> Any:
    return page.locator("#log .msg[data-role=assistant]:not(.msg--streaming)[data-key]")


def transcript(page: Page) -> list[tuple[str, str]]:
    """(role, text) of every message bubble on the page, in order."""
    return [
        (row["role"], row["text"])
        for row in page.evaluate(
            """() => [...document.querySelectorAll('#log .msg')].map(el => ({
                 role: el.dataset.role, text: el.querySelector('.msg__body').textContent}))"""
        )
    ]


def exchange(page: Page, text: str, replies_before: int) -> str:
    """Send a message and wait for its reply to finish; returns the reply text."""
    send(page, text)
    expect(finished(page)).to_have_count(replies_before + 1)
    reply = finished(page).nth(replies_before).locator(".msg__body").text_content() or ""
    assert text.split()[-1] in reply
    return reply


def load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def archive_with(server: Server, count: int = 1) -> list[Path]:
    return wait_for(
        lambda: len(server.archived()) >= count and server.archived(),
        what=f"{count} archive(s)",
        show=server.archived,
    )


def save_screenshot(page: Page, tmp_path: Path, name: str, **options: Any) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), **options)
    assert path.stat().st_size < 200_000, f"{name} is {path.stat().st_size} bytes"
    target = SCREENSHOTS / name
    if not target.exists() or UPDATE_SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return path


def assert_no_csp_violations(pages: Pages) -> None:
    blocked = [line for line in pages.console if "Content Security Policy" in line]
    assert blocked == [], blocked


def chat_then_close(pages: Pages, server: Server, user: str, texts: list[str]) -> Path:
    """Scenario 2's flow: chat, close the page, wait for the archive; returns its path."""
    before = set(server.archived())
    page = open_chat(pages.page(), server.chat_url(user))
    for n, text in enumerate(texts):
        exchange(page, text, n)
    page.close()
    new = wait_for(
        lambda: sorted(set(server.archived()) - before),
        what="the archive after closing",
        show=lambda: (server.archived(), server.log().splitlines()[-8:]),
    )
    assert len(new) == 1, new
    return Path(new[0])


class HostSite:
    """A page on a second origin that embeds the widget, served with a strict CSP of its own."""

    def __init__(self, archiver: str, script_attrs: str, port: int) -> None:
        self.port = port
        self.origin = f"http://localhost:{self.port}"
        self.token_requests = 0
        self.token = ""
        csp = (
            f"default-src 'self'; script-src 'self' {archiver}; frame-src {archiver}; "
            "style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'"
        )
        page = (
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Host shop</title></head>"
            "<body><h1>Host shop</h1><p>Products and things.</p>"
            f'<script src="{archiver}/widget/embed.js" {script_attrs} async></script>'
            "</body></html>"
        ).encode()
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/token":
                    site.token_requests += 1
                    body, kind = json.dumps({"token": site.token}).encode(), "application/json"
                elif self.path == "/":
                    body, kind = page, "text/html; charset=utf-8"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Security-Policy", csp)
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HostSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- 1. a message and its streamed reply ----------------------------------------------------


def test_chat_streams_reply_progressively(
    start_server: Callable[..., Server], pages: Pages, tmp_path: Path
) -> None:
    server = start_server(ARCHIVER_ECHO_DELAY="0.12")
    page = pages.page()
    response = page.goto(server.chat_url("alice"))
    assert response is not None and response.ok
    assert "script-src 'self'" in response.headers.get("content-security-policy", "")
    assert response.headers.get("x-content-type-options") == "nosniff"
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    assert "token" not in page.url, "the token must leave the address bar"
    expect(page.locator("#status")).to_contain_text("Live")
    expect(page.locator("#log")).to_have_attribute("aria-live", "polite")

    exchange(page, "Hi! Where is my order 1042?", 0)

    # Record every state of the streaming bubble, so "progressively" is a fact, not a feeling.
    page.evaluate(
        """() => {
          window.__seen = [];
          new MutationObserver(() => {
            const body = document.querySelector('#log .msg--streaming .msg__body');
            if (body) window.__seen.push(body.textContent);
          }).observe(document.getElementById('log'),
                     {subtree: true, childList: true, characterData: true, attributes: true});
        }"""
    )
    words = "please tell me when the parcel with the blue box will arrive at my door"
    composer = page.locator("#input")
    composer.focus()
    page.keyboard.type("Second question:")
    page.keyboard.press("Shift+Enter")  # a newline, not a send
    expect(bubbles(page, "user")).to_have_count(1)
    page.keyboard.type(words)
    page.keyboard.press("Enter")

    streaming = page.locator("#log .msg--streaming")
    expect(streaming).to_have_count(1)
    page.wait_for_function(
        """() => { const b = document.querySelector('#log .msg--streaming .msg__body');
                   return b && b.textContent.trim().split(/\\s+/).length >= 4; }"""
    )
    expect(page.locator("#stop")).to_be_visible()
    assert streaming.evaluate("el => el.closest('[aria-live]') !== null")
    save_screenshot(page, tmp_path, "widget-mid-reply.png")

    expect(finished(page)).to_have_count(2)
    expect(page.locator("#stop")).to_be_hidden()
    final = finished(page).nth(1).locator(".msg__body").text_content() or ""
    assert "arrive at my door" in final

    seen = [s for s in page.evaluate("window.__seen") if s.strip()]
    distinct = list(dict.fromkeys(seen))
    assert len(distinct) >= 3, f"the reply did not stream: {distinct}"
    for shorter, longer in itertools.pairwise(distinct):
        assert longer.startswith(shorter), (
            f"streamed text went backwards: {shorter!r} -> {longer!r}"
        )
    assert len(distinct[0]) < len(final)

    assert transcript(page)[2] == ("user", f"Second question:\n{words}")
    assert [role for role, _ in transcript(page)] == ["user", "assistant", "user", "assistant"]
    expect(page.locator("#log .msg time")).to_have_count(4)

    # Keyboard only: focus moves visibly to the Send button.
    composer.focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "send"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    assert_no_csp_violations(pages)


# ---- 2. closing the page archives the dialog -------------------------------------------------


def test_closing_page_archives_with_reason_disconnect(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    server = start_server()
    archive = chat_then_close(pages, server, "bob", ["hello archive"])

    doc = load_yaml(archive)
    assert doc["user"] == "bob"
    assert doc["reason"] == "disconnect"
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant"]
    assert doc["messages"][0]["text"] == "hello archive"
    assert "hello archive" in doc["messages"][1]["text"]
    lines = archive.read_text(encoding="utf-8").rstrip().splitlines()
    tail = [line for line in lines if line != "..."][-2:]  # "..." may close the document
    assert tail[0].startswith("ended: ") and tail[1] == "reason: disconnect"


# ---- 3. the server restarts under an open page ----------------------------------------------


def test_server_restart_reconnects_without_duplicates(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    # The reload below must land within the grace to continue the dialog: the browser
    # tests' 0.2 s grace is overrun by a reload on a busy machine (the dialog was then
    # archived as a disconnect, and the reloaded page rightly showed nothing).
    server = start_server(ARCHIVER_DISCONNECT_GRACE="30")
    page = open_chat(pages.page(), server.chat_url("carol"))
    exchange(page, "before the restart", 0)

    assert server.stop() == 0
    expect(page.locator("#status")).not_to_have_attribute("data-state", "live")
    expect(page.locator("#log .notice--warning")).to_contain_text("going away")
    expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
    archived = load_yaml(archive_with(server)[0])
    assert archived["reason"] == "shutdown"

    server.start()  # same port: the page's EventSource finds it by itself
    expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=30_000)
    expect(page.locator("#log .notice--ok")).to_contain_text("Reconnected")
    expect(page.locator("#log .notice--archived")).to_contain_text("shut down")

    exchange(page, "after the restart", 1)
    rows = transcript(page)
    assert [text for role, text in rows if role == "user"] == [
        "before the restart",
        "after the restart",
    ]
    assert len([1 for role, _ in rows if role == "assistant"]) == 2
    keys = page.evaluate("[...document.querySelectorAll('#log .msg')].map(el => el.dataset.key)")
    assert len(keys) == len(set(keys)) == 4

    # A reload continues the current dialog (GET /dialog + replay), still once each.
    page.reload()
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    expect(finished(page)).to_have_count(1)
    assert [text for role, text in transcript(page) if role == "user"] == ["after the restart"]


# ---- 4. two tabs of one user -----------------------------------------------------------------


def test_two_tabs_see_each_message_once_and_closing_one_archives_nothing(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    server = start_server()
    context = pages.context()
    url = server.chat_url("dave")
    tab_a = open_chat(pages.page(context), url)
    tab_b = open_chat(pages.page(context), url)

    exchange(tab_a, "from tab A", 0)
    expect(finished(tab_b)).to_have_count(1)
    exchange(tab_b, "from tab B", 1)
    expect(finished(tab_a)).to_have_count(2)
    for tab in (tab_a, tab_b):
        rows = transcript(tab)
        assert [text for role, text in rows if role == "user"] == ["from tab A", "from tab B"]
        assert [role for role, _ in rows] == ["user", "assistant"] * 2

    tab_b.close()
    server.wait_log("sse.disconnect")  # the server has seen the tab go
    # Observation window: nothing may be archived. Real time, unlike the unit tests' fake
    # clock: the grace timer runs in a server subprocess whose clock no test can drive.
    deadline = time.monotonic() + GRACE * 8
    while time.monotonic() < deadline:
        assert server.archived() == [], "closing one of two tabs archived the dialog"
        time.sleep(0.05)

    exchange(tab_a, "tab A alone", 2)
    assert server.archived() == []
    assert [text for role, text in transcript(tab_a) if role == "user"] == [
        "from tab A",
        "from tab B",
        "tab A alone",
    ]
    current = load_yaml(server.current()[0])
    assert len(current["messages"]) == 6

    tab_a.close()  # the last connection: now it is archived, once, with everything
    doc = load_yaml(archive_with(server)[0])
    assert doc["reason"] == "disconnect" and len(doc["messages"]) == 6
    assert len(server.archived()) == 1


def test_second_tab_sees_the_reply_streaming_and_can_stop_it(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    server = start_server(ARCHIVER_ECHO_DELAY="0.25")
    context = pages.context()
    url = server.chat_url("olga")
    tab_a = open_chat(pages.page(context), url)
    tab_b = open_chat(pages.page(context), url)

    send(tab_a, " ".join(f"word{n}" for n in range(40)) + " omega")
    expect(tab_b.locator("#log .msg--streaming")).to_have_count(1)
    expect(tab_b.locator("#stop")).to_be_visible()

    send(tab_b, "me too")  # one reply at a time: 409, said in words
    expect(tab_b.locator("#alert-text")).to_contain_text(re.compile(r"\w+ \w+ \w+"))
    expect(tab_b.locator("#input")).to_have_value("me too")

    tab_b.locator("#stop").click()
    for tab in (tab_a, tab_b):
        expect(finished(tab)).to_have_count(1)
        expect(finished(tab).locator(".msg__flag")).to_have_text("stopped")
        assert [role for role, _ in transcript(tab)] == ["user", "assistant"]
    expect(tab_a.locator("#stop")).to_be_hidden()


# ---- 5. Stop mid-reply, then New conversation -----------------------------------------------


def test_stop_mid_reply_and_new_conversation(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    server = start_server(ARCHIVER_ECHO_DELAY="0.25")
    page = open_chat(pages.page(), server.chat_url("erin"))
    long_text = " ".join(f"word{n}" for n in range(40)) + " omega"
    send(page, long_text)

    page.wait_for_function(
        """() => { const b = document.querySelector('#log .msg--streaming .msg__body');
                   return b && b.textContent.includes('word2'); }"""
    )
    page.get_by_role("button", name="Stop").click()

    stopped = finished(page)
    expect(stopped).to_have_count(1)
    expect(stopped.locator(".msg__flag")).to_have_text("stopped")
    assert "omega" not in (stopped.locator(".msg__body").text_content() or "")
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_enabled()

    def interrupted_on_disk() -> bool:
        files = server.current()
        if not files:
            return False
        messages = load_yaml(files[0]).get("messages") or []
        return len(messages) == 2 and messages[1].get("interrupted") is True

    wait_for(
        interrupted_on_disk,
        what="the partial reply journaled with interrupted: true",
        show=lambda: [load_yaml(f).get("messages") for f in server.current()],
    )
    old_dialog = page.locator("#log .msg").first.get_attribute("data-dialog")

    page.get_by_role("button", name="New conversation").click()
    expect(page.locator("#log .msg")).to_have_count(0)
    expect(page.locator("#log .notice")).to_contain_text("New conversation")
    doc = load_yaml(archive_with(server)[0])
    assert doc["reason"] == "user"
    assert len(doc["messages"]) == 2 and doc["messages"][1].get("interrupted") is True

    exchange(page, "a fresh start", 0)
    new_dialogs = set(
        page.evaluate("[...document.querySelectorAll('#log .msg')].map(e => e.dataset.dialog)")
    )
    assert len(new_dialogs) == 1 and old_dialog not in new_dialogs
    assert len(server.archived()) == 1


# ---- 6. markup is text ----------------------------------------------------------------------


def test_markup_in_messages_is_displayed_literally(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    server = start_server()
    page = pages.page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_chat(page, server.chat_url("mallory"))
    page.evaluate("window.__pwned = 0")

    image = "<img src=x onerror=alert(1)>"
    script = "<script>window.__pwned = 1; alert(2)</script> and <b>bold</b>"
    exchange(page, image, 0)
    exchange(page, script, 1)

    users = [text for role, text in transcript(page) if role == "user"]
    assert users == [image, script]
    replies = [text for role, text in transcript(page) if role == "assistant"]
    assert image in replies[0] and script in replies[1]
    assert page.locator("#log img, #log script, #log b").count() == 0
    assert page.evaluate("window.__pwned") == 0
    assert dialogs == []

    # The review page renders the same transcript as text, too.
    page.close()
    archive_with(server)
    review = pages.page()
    review.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    review.goto(server.review_url("mallory"))
    review.locator(".archive").first.click()
    expect(review.locator(".tmsg")).to_have_count(4)
    expect(review.locator(".tmsg__body").first).to_have_text(image)
    assert review.locator("#messages img, #messages script, #messages b").count() == 0
    assert dialogs == []


# ---- 7. embedded on another origin -----------------------------------------------------------


def _embedded_chat(page: Page, server: Server, title: str, screenshot: Path | None = None) -> None:
    launcher = page.get_by_role("button", name=f"Open {title}")
    expect(launcher).to_be_visible()
    expect(launcher).to_have_attribute("aria-expanded", "false")
    launcher.click()
    expect(page.get_by_role("button", name=f"Close {title}")).to_have_attribute(
        "aria-expanded", "true"
    )

    frame = page.frame_locator(f"iframe[title='{title}']")
    expect(frame.locator("#status")).to_have_attribute("data-state", "live")
    expect(frame.locator("#title")).to_have_text(title)
    widget = next(f for f in page.frames if f.url.startswith(server.url))
    assert widget.url == f"{server.url}/widget/chat.html", "the token must leave the iframe's URL"

    frame.locator("#input").fill("hi from the shop")
    frame.locator("#input").press("Enter")
    reply = frame.locator("#log .msg[data-role=assistant]:not(.msg--streaming)[data-key]")
    expect(reply).to_have_count(1)
    expect(reply.locator(".msg__body")).to_contain_text("hi from the shop")
    if screenshot is not None:
        save_screenshot(page, screenshot.parent, screenshot.name)

    frame.locator("#close").click()  # the widget asks the host page to close its panel
    expect(page.get_by_role("button", name=f"Open {title}")).to_have_attribute(
        "aria-expanded", "false"
    )
    expect(page.locator("iframe")).to_be_hidden()


def test_embed_on_another_origin_chats(
    start_server: Callable[..., Server], pages: Pages, tmp_path: Path
) -> None:
    host_port = free_port()  # chosen first: the server must allow exactly this origin to frame it
    server = start_server(ARCHIVER_ALLOWED_ORIGINS=f"http://localhost:{host_port}")
    attrs = (
        f'data-token="{mint("frank")}" data-title="Help desk" data-color="#0b6e4f" '
        'data-position="left"'
    )
    with HostSite(server.url, attrs, host_port) as site:
        page = pages.page()
        page.goto(f"{site.origin}/")
        launcher = page.get_by_role("button", name="Open Help desk")
        box = launcher.bounding_box()
        assert box is not None and box["x"] < DESKTOP["width"] / 2, "data-position=left"
        assert launcher.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(11, 110, 79)"
        _embedded_chat(page, server, "Help desk", tmp_path / "embed-host-page.png")

    current = load_yaml(server.current()[0])
    assert current["user"] == "frank"
    assert current["messages"][0]["text"] == "hi from the shop"
    assert_no_csp_violations(pages)  # the host page's strict CSP did not block the embed either


def test_embed_on_a_site_not_allowed_names_the_setting_in_the_panel_and_the_log(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    """Without ARCHIVER_ALLOWED_ORIGINS the browser refuses the frame (CSP frame-ancestors)
    and would show its sad-page icon; the panel says why instead, and the server logs the
    origin once, however many times it tries."""
    server = start_server()
    with HostSite(server.url, f'data-token="{mint("ivy")}" data-title="Help"', free_port()) as site:
        for _ in range(2):
            page = pages.page()
            page.goto(f"{site.origin}/")
            page.get_by_role("button", name="Open Help").click()
            problem = page.locator(".problem")
            expect(problem).to_contain_text("ARCHIVER_ALLOWED_ORIGINS")
            expect(problem).to_contain_text(site.origin)
            page.close()

    def refused() -> list[str]:
        return [line for line in server.log().splitlines() if " widget.framing_refused " in line]

    [line] = wait_for(
        refused, what="the widget.framing_refused line", show=lambda: server.log()[-2000:]
    )
    assert f"origin={site.origin} " in line and "path=/widget/chat.html" in line
    assert not server.current(), "nothing was journaled"


def test_embed_with_token_url(start_server: Callable[..., Server], pages: Pages) -> None:
    host_port = free_port()
    server = start_server(ARCHIVER_ALLOWED_ORIGINS=f"http://localhost:{host_port}")
    with HostSite(server.url, 'data-token-url="/token" data-title="Support"', host_port) as site:
        site.token = mint("grace")
        page = pages.page()
        page.goto(f"{site.origin}/")
        expect(page.get_by_role("button", name="Open Support")).to_be_visible()
        assert site.token_requests == 0, "no token is fetched before the launcher is used"
        _embedded_chat(page, server, "Support")
        assert site.token_requests == 1
    assert load_yaml(server.current()[0])["user"] == "grace"


# ---- 8. the review page ----------------------------------------------------------------------


def test_review_page_lists_archive_and_shows_transcript(
    start_server: Callable[..., Server], pages: Pages, tmp_path: Path
) -> None:
    server = start_server()
    user = "shop|ana"
    archive = chat_then_close(
        pages, server, user, ["Hello, I need help with my order.", "It has not arrived yet."]
    )
    doc = load_yaml(archive)

    page = pages.page()
    page.goto(server.review_url(user))
    assert "token" not in page.url
    rows = page.locator("#archives .archive")
    expect(rows).to_have_count(1)
    row = rows.first
    expect(row.locator(".archive__name")).to_have_text(archive.name)
    expect(row.locator(".archive__reason")).to_have_text("Disconnected")
    expect(row.locator(".archive__count")).to_have_text("4 messages")
    expect(row.locator("time")).to_have_count(2)

    row.click()
    messages = page.locator("#messages .tmsg")
    expect(messages).to_have_count(4)
    expect(messages.nth(0).locator(".tmsg__body")).to_have_text("Hello, I need help with my order.")
    expect(messages.nth(0)).to_have_attribute("data-role", "user")
    expect(messages.nth(1)).to_have_attribute("data-role", "assistant")
    expect(messages.locator("time")).to_have_count(4)
    stamp = messages.nth(0).locator("time").get_attribute("datetime")
    assert stamp == doc["messages"][0]["at"]
    expect(page.locator("#facts")).to_contain_text("Disconnected")
    save_screenshot(page, tmp_path, "review-page.png")

    # Filters: by reason, and by date range (client-side).
    page.locator("#reason").select_option("timeout")
    expect(rows).to_have_count(0)
    expect(page.locator("#archives-empty")).to_be_visible()
    # A transcript the filters leave out is no longer shown beside the empty list.
    expect(messages).to_have_count(0)
    expect(page.locator("#transcript-empty")).to_be_visible()
    expect(page.get_by_role("button", name="Download YAML")).to_be_hidden()
    page.locator("#reason").select_option("disconnect")
    expect(rows).to_have_count(1)
    page.locator("#from").fill((date.today() + timedelta(days=2)).isoformat())
    page.locator("#from").dispatch_event("change")
    expect(rows).to_have_count(0)
    page.get_by_role("button", name="Clear filters").click()
    expect(rows).to_have_count(1)
    row.click()
    expect(messages).to_have_count(4)

    # The raw YAML, byte for byte, through a Bearer-authenticated fetch.
    with page.expect_download() as download:
        page.get_by_role("button", name="Download YAML").click()
    saved = tmp_path / "downloaded.yaml"
    download.value.save_as(saved)
    assert download.value.suggested_filename == archive.name
    assert saved.read_bytes() == archive.read_bytes()

    # An admin picks the user from a list and sees the same transcript.
    admin = pages.page()
    admin.goto(server.review_url("root", admin=True))
    expect(admin.locator("#user-field")).to_be_visible()
    admin.locator("#user").select_option(user)
    expect(admin.locator("#archives .archive")).to_have_count(1)
    admin.locator("#archives .archive").first.click()
    expect(admin.locator("#messages .tmsg")).to_have_count(4)
    expect(admin.locator("#facts")).to_contain_text(user)
    assert_no_csp_violations(pages)


# ---- layout ---------------------------------------------------------------------------------


def test_widget_and_review_fit_a_phone(start_server: Callable[..., Server], pages: Pages) -> None:
    server = start_server()
    phone = {"viewport": {"width": 360, "height": 640}, "is_mobile": True, "has_touch": True}
    page = open_chat(pages.page(**phone), server.chat_url("henry"))
    exchange(page, "a-very-long-word-without-any-spaces-" * 6 + "end", 0)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    for control in ("#send", "#input", "#new-conversation"):
        box = page.locator(control).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, control

    review = pages.page(**phone)
    review.goto(server.review_url("henry"))
    expect(review.locator("#archives-empty")).to_be_visible()
    assert review.evaluate("document.documentElement.scrollWidth") <= 360


def test_chat_and_review_name_the_roles_alike(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    server = start_server()
    chat_then_close(pages, server, "ines", ["hello there"])
    page = open_chat(pages.page(), server.chat_url("ines"))
    exchange(page, "and again", 0)
    expect(page.locator("#log .msg[data-role=user] .msg__who").first).to_have_text("User")
    review = pages.page()
    review.goto(server.review_url("ines"))
    review.locator("#archives .archive").first.click()
    expect(review.locator("#messages .tmsg[data-role=user]").first).to_contain_text("User")


def test_a_resize_to_a_phone_keeps_the_newest_message_in_view(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    server = start_server()
    page = open_chat(pages.page(), server.chat_url("jon"))
    for i in range(6):
        exchange(page, f"message number {i} " + "with quite a few words in it " * 8, i)

    def gap() -> float:
        return float(
            page.evaluate(
                "(l => l.scrollHeight - l.scrollTop - l.clientHeight)"
                "(document.getElementById('log'))"
            )
        )

    assert gap() < 2, "the newest message is in view before the resize"
    page.set_viewport_size({"width": 360, "height": 640})
    wait_for(
        lambda: page.evaluate("window.innerWidth") == 360 and gap() < 2,
        what="the log scrolled to its end after the resize",
        show=lambda: (page.evaluate("window.innerWidth"), gap()),
    )


# ---- errors and connection states ----------------------------------------------------------


def test_http_errors_are_shown_as_readable_text(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    server = start_server()
    page = open_chat(pages.page(), server.chat_url("ivan"))
    answers = [
        (
            429,
            {"Retry-After": "7", "Content-Type": "application/json"},
            json.dumps({"error": "rate_limited", "detail": "Slow down, please."}),
        ),
    ]

    def fake(route: Any) -> None:
        if not answers:
            route.continue_()  # the proxy is back
            return
        status, headers, body = answers.pop(0)
        route.fulfill(status=status, headers=headers, body=body)

    page.route("**/chat", fake)
    send(page, "too fast")
    expect(page.locator("#alert")).to_be_visible()
    expect(page.locator("#alert-text")).to_have_text("Slow down, please. You can try again in 7 s.")
    expect(page.locator("#input")).to_have_value("too fast")  # the words come back to be resent
    expect(page.locator("#log .msg")).to_have_count(0)

    # A proxy's 503 page: said in words, and the message is sent again by itself (issue 13).
    answers.append((503, {"Content-Type": "text/html"}, "<html><body>nginx: 503</body></html>"))
    page.locator("#input").press("Enter")
    expect(page.locator("#alert-text")).to_contain_text("temporarily unavailable")
    assert "<html>" not in (page.locator("#alert-text").text_content() or "")
    expect(finished(page)).to_have_count(1)
    expect(page.locator("#alert")).to_be_hidden()
    assert [text for role, text in transcript(page) if role == "user"] == ["too fast"]


def test_rejected_token_is_offline_with_the_servers_words(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    server = start_server()
    page = pages.page()
    page.goto(f"{server.url}/#token={mint('judy', ttl=-60)}")  # expired a minute ago
    expect(page.locator("#status")).to_have_attribute("data-state", "offline")
    expect(page.locator("#alert")).to_be_visible()
    assert (page.locator("#alert-text").text_content() or "").strip()
    expect(page.locator("#send")).to_be_disabled()

    fresh = pages.page()  # a new tab has no remembered token: say how to get one
    fresh.goto(f"{server.url}/")
    expect(fresh.locator("#status")).to_have_attribute("data-state", "offline")
    expect(fresh.locator("#alert-text")).to_contain_text("#token=")


def test_offline_then_online_is_shown_honestly(
    start_server: Callable[..., Server], pages: Pages
) -> None:
    server = start_server()
    context = pages.context()
    page = open_chat(pages.page(context), server.chat_url("kim"))
    context.set_offline(True)
    expect(page.locator("#status")).to_have_attribute("data-state", "offline")
    context.set_offline(False)
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    exchange(page, "back online", 0)
