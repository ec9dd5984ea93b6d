"""The review page's search box, charts, Markdown download and print view, in a real
headless Chromium against a live `archiver serve` (issue 14).

The browser fixtures live in tests/browser.py (conftest.py provides them); the page
helpers (open a chat, send, the host site) come from tests/test_e2e_browser.py.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from archiver import transcripts
from archiver.dialogfile import parse_dialog
from tests.browser import BROWSER_SETTINGS, Pages
from tests.helpers import Server, mint, wait_for
from tests.test_e2e_browser import assert_no_csp_violations
from tests.test_review import write_archive

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture reports it as unavailable
    expect = None  # type: ignore[assignment]

USER = "shop|ana"
LONG = "2026-11-20-10-00-00.yaml"
SHORT = "2026-11-21-09-00-00.yaml"
TARGET_SEQ = 37
MARKUP = "Please refund <b>now</b> & <img src=x onerror=alert(1)>"


def seed(data: Path) -> None:
    """ana: a long dialog with one refund question deep inside (written before entries
    named their upstream), and a short one answered by echo; bob: one, openai failed."""
    texts = []
    for seq in range(1, 41):
        role = "user" if seq % 2 else "assistant"
        texts.append((role, MARKUP if seq == TARGET_SEQ else f"line {seq}: nothing to see\n" * 3))
    write_archive(data, USER, LONG, texts, ended="2026-11-20T10:00:00.000Z")
    write_archive(
        data,
        USER,
        SHORT,
        [
            ("user", "Where is my parcel?"),
            ("assistant", "On its way.", {"upstream": "echo", "first_token_ms": 120}),
        ],
        ended="2026-11-21T09:00:00.000Z",
        reason="timeout",
    )
    write_archive(
        data,
        "bob",
        "2026-11-21-12-00-00.yaml",
        [
            ("user", "a refund for bob"),
            ("error", "The model did not answer in time.", {"upstream": "openai"}),
        ],
        ended="2026-11-21T12:00:00.000Z",
        reason="user",
    )


@pytest.fixture
def server(tmp_path: Path, make_server: Callable[..., Server]) -> Server:
    started = make_server(data=tmp_path / "server" / "data", start=False, **BROWSER_SETTINGS)
    seed(started.data)
    started.start()
    # The start-up catch-up runs in the index's worker thread: wait until it has.
    token = mint("root", admin=True)

    def caught_up() -> bool:
        found = _get_json(started, "/search?q=refund", token)
        return isinstance(found, dict) and len(found["hits"]) == 2

    wait_for(
        caught_up,
        20,
        "the index to catch up with the seeded archives",
        show=lambda: _get_json(started, "/search?q=refund", token),
    )
    return started


def _get_json(server: Server, path: str, token: str) -> object:
    request = urllib.request.Request(
        server.url + path, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _searches(page: object, seen: list[str]) -> Callable[[object], None]:
    def note(request: object) -> None:
        url = getattr(request, "url", "")
        if "/search?" in url:
            seen.append(urllib.parse.unquote_plus(url.split("q=", 1)[1].split("&")[0]))

    return note


def test_search_as_you_type_highlights_and_opens_the_message(server: Server, pages: Pages) -> None:
    page = pages.page()
    seen: list[str] = []
    page.on("request", _searches(page, seen))
    page.goto(server.review_url(USER))
    expect(page.locator("#archives .archive")).to_have_count(2)
    page.locator("#q").press_sequentially("refund", delay=20)
    hits = page.locator("#hits .hit")
    expect(hits).to_have_count(1)  # bob's refund is not ana's to see
    expect(page.locator("#hits-status")).to_have_text("1 matching message, best first")
    # Debounced: six keystrokes, fewer searches, the last one for the whole word.
    assert 1 <= len(seen) < 6 and seen[-1] == "refund", seen
    # The snippet is text: the markup in the message shows literally, the hit is marked.
    expect(hits.first.locator("mark")).to_have_text("refund")
    expect(hits.first.locator(".hit__snippet")).to_have_text(MARKUP)
    assert page.locator("#hits b, #hits img").count() == 0

    hits.first.click()
    target = page.locator(f"#messages .tmsg[data-seq='{TARGET_SEQ}']")
    expect(target).to_have_class("tmsg tmsg--user tmsg--hit")
    expect(target).to_be_in_viewport()
    expect(page.locator("#messages .tmsg--hit")).to_have_count(1)
    assert page.locator("#messages b, #messages img").count() == 0

    # A query that cannot be read says why, in a sentence, and shows no hits.
    page.locator("#q").fill('"unclosed')
    expect(page.locator("#hits-status")).to_contain_text("A quote is not closed")
    expect(hits).to_have_count(0)
    page.locator("#q").fill("")
    expect(page.locator("#hits-status")).to_have_text("")
    assert_no_csp_violations(pages)


def test_download_markdown_and_print_the_transcript(
    server: Server, pages: Pages, tmp_path: Path
) -> None:
    page = pages.page()
    # Count the page's calls to print() instead of opening the print dialog.
    page.add_init_script("window.print = () => { window.printed = (window.printed || 0) + 1; };")
    page.goto(server.review_url(USER))
    page.locator(f"#archives .archive[data-name='{SHORT}']").click()
    expect(page.locator("#messages .tmsg")).to_have_count(2)
    # The answer names its upstream and first-word time; the question has neither.
    origin = page.locator("#messages .tmsg__origin")
    expect(origin).to_have_count(1)
    expect(origin).to_have_text("echo · first word 120 ms")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download Markdown").click()
    saved = tmp_path / "t.md"
    download.value.save_as(saved)
    assert download.value.suggested_filename == SHORT.replace(".yaml", ".md")
    archive = server.data / "users" / "shop%7Cana" / "dialogs" / "archived" / SHORT
    item = transcripts.Transcript(USER, SHORT, parse_dialog(archive.read_bytes()))
    assert saved.read_text(encoding="utf-8") == transcripts.markdown(item)

    # Print: the button asks the browser to print; the print view is the transcript alone.
    page.get_by_role("button", name="Print").click()
    page.wait_for_function("window.printed === 1")
    page.emulate_media(media="print")
    for chrome in (".review__bar", ".filters", ".search", ".archives", "#actions"):
        expect(page.locator(chrome)).to_be_hidden()
    expect(page.locator("#messages .tmsg").first).to_be_visible()
    expect(page.locator("#facts")).to_be_visible()
    page.emulate_media(media="screen")
    expect(page.get_by_role("button", name="Download YAML")).to_be_visible()


def test_an_admin_sees_charts_and_searches_every_user(server: Server, pages: Pages) -> None:
    plain = pages.page()
    plain.goto(server.review_url(USER))
    expect(plain.locator("#archives .archive")).to_have_count(2)
    expect(plain.locator("#stats")).to_be_hidden()

    admin = pages.page()
    admin.goto(server.review_url("root", admin=True))
    expect(admin.locator("#stats")).to_be_visible()
    expect(admin.locator("#stats-summary")).to_contain_text("3 archives")
    days = admin.locator("#chart-days svg .chart__bar")
    expect(days).to_have_count(2)  # 2026-11-20 and 2026-11-21
    expect(days.nth(1).locator("title")).to_have_text("2026-11-21: disconnect 0, timeout 1, user 1")
    expect(admin.locator("#chart-days .chart__legend li")).to_have_count(3)
    replies = admin.locator("#chart-replies svg .chart__bar")
    expect(replies).to_have_count(10)  # nine bounds and "more"
    expect(admin.locator("#chart-replies figcaption")).to_contain_text("p50")
    # The one reply that recorded its first-token time (the seeded 120 ms), and the
    # replies per upstream: ana's long dialog predates the field, so "unknown".
    first = admin.locator("#chart-first")
    expect(first.locator("figcaption")).to_have_text("First word: p50 0.12 s, p95 0.12 s (1 reply)")
    expect(first.locator("svg .chart__bar")).to_have_count(10)
    rows = admin.locator("#chart-upstreams .upstreams__row")
    expect(rows).to_have_count(3)
    for upstream, counts in (("echo", "1 0 0"), ("openai", "1 0 1"), ("unknown", "20 0 0")):
        cells = rows.and_(admin.locator(f"[data-upstream='{upstream}']")).locator("td")
        expect(cells).to_have_text([upstream, *counts.split()])

    # Every user's hits, each naming its user; a click opens that user's transcript.
    admin.locator("#q").fill("refund")
    hits = admin.locator("#hits .hit")
    expect(hits).to_have_count(2)
    bob = hits.filter(has_text="bob")
    expect(bob.locator(".hit__user")).to_have_text("bob")
    bob.click()
    expect(admin.locator("#user")).to_have_value("bob")
    expect(admin.locator("#messages .tmsg--hit")).to_have_attribute("data-seq", "1")
    assert_no_csp_violations(pages)
