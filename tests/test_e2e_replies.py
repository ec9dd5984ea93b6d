"""A live `archiver serve` talking to real HTTP upstreams on loopback (tests/upstreams.py)."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import yaml

from tests.helpers import Server, SSEClient, mint, wait_for
from tests.upstreams import Upstream

Make = Callable[..., Server]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


def openai_server(make: Make, upstream: Upstream, path: str = "openai", **settings: str) -> Server:
    return make(
        upstream="openai",
        upstream_url=f"{upstream.url}/{path}",
        upstream_model="test-model",
        **settings,
    )


def messages(server: Server, user: str) -> list[dict]:  # type: ignore[type-arg]
    return httpx.get(server.url + "/dialog", headers=server.headers(user)).json()["messages"]


def reply_events(sse: SSEClient) -> list[dict]:  # type: ignore[type-arg]
    events = []
    while True:
        event = sse.next("reply").data
        events.append(event)
        if event["type"] in ("end", "error"):
            return events


def test_openai_reply_streams_to_subscribers_and_is_journaled_once(
    make_server: Make, upstream: Upstream
) -> None:
    server = openai_server(
        make_server,
        upstream,
        system_prompt="You are terse.",
        history_messages="3",
        upstream_api_key="sk-never-logged",
    )
    token = mint("alice")
    with SSEClient(server.url, token) as sse:
        sse.next("ready")
        for text in ("one", "two"):
            assert server.chat("alice", text).status_code == 200
        response = server.chat("alice", "three")
        assert response.json()["reply"]["text"] == "Hello from the model."
        final = wait_for(
            lambda: [e.data for e in sse.seen if e.event == "message" and e.data["seq"] == 6],
            what="the third reply's message",
        )[0]
        message_id = f"{final['dialog']}:{final['seq']}"
        events = [
            e.data for e in sse.seen if e.event == "reply" and e.data["message_id"] == message_id
        ]
        assert [e["type"] for e in events] == ["begin"] + ["item"] * 5 + ["end"]
        assert "".join(e["content"] for e in events) == "Hello from the model."
        assert final["role"] == "assistant" and final["text"] == "Hello from the model."
    texts = [m["text"] for m in messages(server, "alice")]
    assert texts.count("Hello from the model.") == 3
    sent = upstream.requests[-1]
    assert sent["body"]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "Hello from the model."},
        {"role": "user", "content": "three"},
    ]
    assert all(token not in str(r) for r in upstream.requests), "the user's JWT never leaves"
    server.wait_log("reply.start", 3)
    done = server.wait_log("reply.done", 3)
    assert all("first_token_ms=" in line for line in done), done
    log = server.log()
    assert upstream.requests[-1]["headers"]["authorization"] == "Bearer sk-never-logged"
    assert "sk-never-logged" not in log


@pytest.mark.parametrize("path", ["stream", "json"])
def test_n8n_webhook(make_server: Make, upstream: Upstream, path: str) -> None:
    server = make_server(
        upstream="n8n", upstream_url=f"{upstream.url}/n8n/{path}", upstream_jwt_secret="w" * 40
    )
    body = server.chat("bob", "hi n8n").json()
    expected = "Hello from the model." if path == "stream" else "n8n says: hi n8n"
    assert body["reply"]["text"] == expected
    assert upstream.requests[-1]["body"]["user"] == "bob"
    assert "w" * 40 not in server.log()


@pytest.mark.parametrize(
    ("path", "status", "partial"),
    [
        ("fail", 502, None),
        ("hang", 504, None),
        ("cut", 502, "Half an answer"),
        ("garbage", 502, None),
    ],
)
def test_upstream_failures_keep_the_question_and_journal_the_error(
    make_server: Make, upstream: Upstream, path: str, status: int, partial: str | None
) -> None:
    server = openai_server(make_server, upstream, path, upstream_timeout="0.5")
    with SSEClient(server.url, mint("carol")) as sse:
        sse.next("ready")
        response = server.chat("carol", "are you there?")
        assert response.status_code == status, response.text
        error = response.json()
        assert error["error"].startswith("upstream_") and error["detail"].endswith(".")
        events = reply_events(sse)
        assert events[-1]["type"] == "error" and events[-1]["content"] == error["detail"]
    on_disk = messages(server, "carol")
    assert on_disk[0] == {**on_disk[0], "role": "user", "text": "are you there?"}
    if partial:
        assert on_disk[1]["role"] == "assistant" and on_disk[1]["text"] == partial
        assert on_disk[1]["interrupted"] is True
        assert on_disk[1]["upstream"] == "openai" and on_disk[1]["first_token_ms"] >= 0
    assert on_disk[-1]["role"] == "error" and on_disk[-1]["text"] == error["detail"]
    assert on_disk[-1]["upstream"] == "openai" and "first_token_ms" not in on_disk[-1]
    line = server.wait_log("reply.error")[0]
    assert "user=carol" in line and "kind=" in line


def test_stop_closes_the_upstream_and_journals_interrupted(
    make_server: Make, upstream: Upstream
) -> None:
    server = openai_server(make_server, upstream, "slow")
    with (
        SSEClient(server.url, mint("dave")) as sse,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        sse.next("ready")
        pending = pool.submit(server.chat, "dave", "tell me a long story")
        wait_for(
            lambda: any(e.event == "reply" and e.data["type"] == "item" for e in sse.seen),
            what="the first token",
        )
        assert httpx.post(server.url + "/chat/stop", headers=server.headers("dave")).json() == {
            "stopped": True
        }
        body = pending.result(10).json()
        assert body["reply"]["interrupted"] is True
    upstream.wait_closed("/slow/chat/completions")
    reply = messages(server, "dave")[1]
    assert reply["interrupted"] is True and reply["text"].startswith("w0")
    server.wait_log("reply.stopped")


def test_disconnect_mid_reply_finishes_and_archives_one_dialog(
    make_server: Make, upstream: Upstream
) -> None:
    server = openai_server(make_server, upstream, "openai", disconnect_grace="0")
    sse = SSEClient(server.url, mint("erin"))
    sse.next("ready")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(server.chat, "erin", "hello?")
        sse.next("reply")
        sse.close()
        assert pending.result(10).status_code == 200
    [archive] = wait_for(lambda: server.archives("erin"), what="the archive")
    doc = yaml.safe_load(archive.read_text())
    assert [m["text"] for m in doc["messages"]] == ["hello?", "Hello from the model."]
    assert doc["reason"] == "disconnect"


def test_sigterm_mid_reply_stops_it_then_archives(make_server: Make, upstream: Upstream) -> None:
    server = openai_server(make_server, upstream, "slow", shutdown_timeout="5")
    with (
        SSEClient(server.url, mint("finn")) as sse,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        sse.next("ready")
        pending = pool.submit(server.chat, "finn", "go on")
        wait_for(
            lambda: any(e.event == "reply" and e.data["type"] == "item" for e in sse.seen),
            what="the first token",
        )
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert pending.result(10).json()["reply"]["interrupted"] is True
        sse.next("shutdown")
    assert server.wait(10) == 0 and time.monotonic() - started < 5
    [archive] = server.archives("finn")
    doc = yaml.safe_load(archive.read_text())
    assert doc["reason"] == "shutdown"
    assert doc["messages"][1]["interrupted"] is True


def test_breaker_opens_after_failures_and_closes_after_cooldown(
    make_server: Make, upstream: Upstream
) -> None:
    server = openai_server(
        make_server, upstream, "fail", breaker_failures="2", breaker_cooldown="1", rate_limit="0"
    )
    for _ in range(2):
        assert server.chat("gus", "x").status_code == 502
    calls = len(upstream.requests)
    refused = server.chat("gus", "while open")
    assert refused.status_code == 503 and refused.json()["error"] == "upstream_unavailable"
    assert int(refused.headers["retry-after"]) >= 1
    assert len(upstream.requests) == calls, "the upstream is not called while open"
    assert "while open" not in [m["text"] for m in messages(server, "gus")]
    server.wait_log("breaker.open")
    time.sleep(1.1)  # the cooldown itself is what is being tested
    assert server.chat("gus", "after cooldown").status_code == 502
    assert len(upstream.requests) == calls + 1, "tried again after the cooldown"


def test_rate_limit_refuses_with_retry_after_and_journals_nothing(make_server: Make) -> None:
    server = make_server(rate_limit="2", echo_delay="0")
    assert server.chat("hana", "1").status_code == 200
    assert server.chat("hana", "2").status_code == 200
    refused = server.chat("hana", "3")
    assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert [m["text"] for m in messages(server, "hana")] == ["1", "Echo: 1", "2", "Echo: 2"]
    assert server.chat("other", "unaffected").status_code == 200
