"""The widget in a real Chromium when things go wrong: the server killed mid-chat and
restarted, messages typed while it is down; no URL it requests carries the token; and an
embed without a token runs on a guest session.

The browser fixtures live in tests/browser.py (conftest.py provides them); the page
helpers (open a chat, send, the host site) come from tests/test_e2e_browser.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from archiver.dialogfile import parse_dialog
from tests.test_e2e_browser import (  # noqa: F401 (fixtures, used by name)
    HostSite,
    Pages,
    Server,
    _embedded_chat,
    browser,
    expect,
    finished,
    free_port,
    load_yaml,
    open_chat,
    pages,
    send,
    start_server,
    wait_for,
)


def user_texts_on_disk(server: Server) -> list[str]:
    """Every user message in the data directory: archives oldest first, then the journal."""
    texts: list[str] = []
    for path in [*server.archived(), *server.current()]:
        texts += [m.text for m in parse_dialog(path.read_bytes()).messages if m.role == "user"]
    return texts


def test_killed_mid_chat_and_restarted_every_message_lands_once_in_order(
    start_server: Callable[..., Server],  # noqa: F811 (fixtures)
    pages: Pages,  # noqa: F811 (fixtures)
) -> None:
    server = start_server(ARCHIVER_ECHO_DELAY="0.2")
    page = open_chat(pages.page(), server.chat_url("dora"))
    send(page, "first, before anything happens")
    expect(finished(page)).to_have_count(1)

    asked = "second, its reply cut by a kill " + "word " * 20
    send(page, asked)
    wait_for(
        lambda: any(b"cut by a kill" in p.read_bytes() for p in server.current()),
        what="the second question journaled",
    )
    # And shown by the stream's `message`: killed before the page had it, the widget would
    # rightly send it again (the server answers it as a repeat), but then three would wait.
    expect(page.locator("#log .msg--pending")).to_have_count(0)
    server.kill()  # SIGKILL mid-reply
    expect(page.locator("#status")).not_to_have_attribute("data-state", "live")
    typed_while_down = ["third, typed while the server is down", "fourth, also while down"]
    for text in typed_while_down:
        send(page, text)
    # The second was shown by the stream's `message` before the kill: only these wait.
    expect(page.locator("#log .msg--pending")).to_have_count(2)
    expect(page.locator("#log .msg--pending").last).to_contain_text("sending")

    server.start()  # the same port; start-up recovery archives the dead process's dialog
    expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=40_000)
    expect(page.locator("#log .msg--pending")).to_have_count(0, timeout=40_000)
    expect(finished(page)).to_have_count(3, timeout=40_000)  # first, third, fourth answered

    wanted = ["first, before anything happens", asked, *typed_while_down]
    wait_for(lambda: user_texts_on_disk(server) == wanted, what="every message once, in order")
    assert server.stop() == 0
    assert user_texts_on_disk(server) == wanted, "exactly once, in order, after the shutdown"
    assert "idempotency_key_unanswered" in server.logs() or "chat.repeated" in server.logs()


def test_no_url_the_widget_requests_contains_the_token(
    start_server: Callable[..., Server],  # noqa: F811 (fixtures)
    pages: Pages,  # noqa: F811 (fixtures)
) -> None:
    server = start_server()
    page = pages.page()
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    url = server.chat_url("erin")
    token = url.split("#token=")[1]
    open_chat(page, url)
    send(page, "hello without a token in any URL")
    expect(finished(page)).to_have_count(1)
    # A reconnect after a restart opens the stream again, with a fresh ticket.
    assert server.stop() == 0
    server.start()
    expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=30_000)
    sent = [u.split("#")[0] for u in urls]  # a fragment never leaves the browser
    subscribes = [u for u in sent if "/subscribe?" in u]
    assert len(subscribes) >= 2 and all("ticket=" in u for u in subscribes), subscribes
    leaks: list[Any] = [u for u in sent if token in u or "access_token" in u]
    assert leaks == [], leaks
    assert token not in server.logs()


def test_embed_without_a_token_uses_a_guest_session(
    start_server: Callable[..., Server],  # noqa: F811 (fixtures)
    pages: Pages,  # noqa: F811 (fixtures)
) -> None:
    host_port = free_port()
    server = start_server(
        ARCHIVER_ALLOWED_ORIGINS=f"http://localhost:{host_port}", ARCHIVER_GUEST_SESSIONS="true"
    )
    with HostSite(server.url, 'data-title="Guest desk"', host_port) as site:
        page = pages.page()
        page.goto(f"{site.origin}/")
        _embedded_chat(page, server, "Guest desk")
    current = load_yaml(server.current()[0])
    assert current["user"].startswith("guest-")
    assert current["messages"][0]["text"] == "hi from the shop"
    [created] = server.wait_log("guest.created")
    assert f"user={current['user']}" in created


def test_embed_without_a_token_on_a_server_without_guests_says_why(
    start_server: Callable[..., Server],  # noqa: F811 (fixtures)
    pages: Pages,  # noqa: F811 (fixtures)
) -> None:
    host_port = free_port()
    server = start_server(ARCHIVER_ALLOWED_ORIGINS=f"http://localhost:{host_port}")
    with HostSite(server.url, 'data-title="Guest desk"', host_port) as site:
        page = pages.page()
        page.goto(f"{site.origin}/")
        page.get_by_role("button", name="Open Guest desk").click()
        frame = page.frame_locator("iframe[title='Guest desk']")
        expect(frame.locator("#alert-text")).to_contain_text("ARCHIVER_GUEST_SESSIONS")
