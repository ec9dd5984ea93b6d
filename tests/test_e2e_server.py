"""End-to-end against a real `archiver serve` process on loopback, with real SSE clients."""

from __future__ import annotations

import concurrent.futures
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from archiver import stats
from tests.helpers import Server, SSEClient, mint, sign, wait_for

Make = Callable[..., Server]


def load(path: Path) -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(path.read_text())


def all_messages(server: Server, user: str) -> list[tuple[str, int, str, str]]:
    """(file, seq, role, text) of every message of ``user`` on disk, archives first."""
    out = []
    files = server.archives(user)
    current = server.user_dir(user) / "current.yaml"
    if current.exists():
        files.append(current)
    for path in files:
        for m in load(path)["messages"]:
            out.append((path.name, m["seq"], m["role"], m["text"]))
    return out


def test_connect_chat_close_archives_with_reason_disconnect(make_server: Make) -> None:
    server = make_server(disconnect_grace="0.2")
    with SSEClient(server.url, mint("alice")) as sse:
        assert sse.next("ready").data == {
            "user": "alice",
            "connection": sse.seen[0].data["connection"],
            "dialog": None,
            "messages": 0,
        }
        response = server.chat("alice", "Hello!\nTwo lines.")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["reply"]["text"] == "Echo: Hello!\nTwo lines."
        items = []
        while True:
            event = sse.next("reply")
            if event.data["type"] == "end":
                break
            if event.data["type"] == "item":
                items.append(event.data["content"])
        assert "".join(items) == body["reply"]["text"]
        assert len(items) > 1, "the echo reply streams word by word"
    archive = wait_for(lambda: server.archives("alice"), what="an archive")[0]
    doc = load(archive)
    assert doc["reason"] == "disconnect"
    assert [(m["seq"], m["role"], m["text"]) for m in doc["messages"]] == [
        (1, "user", "Hello!\nTwo lines."),
        (2, "assistant", "Echo: Hello!\nTwo lines."),
    ]
    assert not (server.user_dir("alice") / "current.yaml").exists()
    wait_for(lambda: server.log_lines("dialog.archived"), what="the log line")
    line = server.log_lines("dialog.archived")[0]
    assert "user=alice" in line and "reason=disconnect" in line and "messages=2" in line


def test_a_reply_records_its_upstream_and_first_word_time(make_server: Make) -> None:
    """The echo responder streams word by word (ARCHIVER_ECHO_DELAY between words): the
    assistant's entry names it and says when its first word came; stats count both."""
    server = make_server(echo_delay="0.05", disconnect_grace="0")
    response = server.chat("fay", "one two three")
    assert response.status_code == 200, response.text
    asked, answer = load(server.user_dir("fay") / "current.yaml")["messages"]
    assert "upstream" not in asked and "first_token_ms" not in asked
    assert answer["upstream"] == "echo"
    reply_ms = stats.stamp_ms(answer["at"]) - stats.stamp_ms(asked["at"])  # type: ignore[operator]
    assert isinstance(answer["first_token_ms"], int)
    assert 0 <= answer["first_token_ms"] <= reply_ms
    assert httpx.post(server.url + "/dialog/archive", headers=server.headers("fay")).is_success
    admin = {"Authorization": f"Bearer {mint('root', admin=True)}"}

    def counted() -> dict | None:  # type: ignore[type-arg]
        figures = httpx.get(server.url + "/admin/stats", headers=admin).json()
        return figures if figures["first_token_ms"]["count"] == 1 else None

    figures = wait_for(counted, what="the stats to count the reply")
    assert figures["first_token_ms"]["p50"] == answer["first_token_ms"]
    assert figures["problems_by_upstream"] == [
        {"upstream": "echo", "replies": 1, "interrupted": 0, "errors": 0}
    ]


def test_connect_alone_creates_no_journal(make_server: Make) -> None:
    server = make_server(disconnect_grace="0")
    with SSEClient(server.url, mint("bob")) as sse:
        sse.next("ready")
    wait_for(lambda: server.log_lines("sse.disconnect"), what="the disconnect")
    assert not (server.user_dir("bob") / "current.yaml").exists()
    assert server.archives("bob") == []


def test_two_connections_archive_only_when_both_close(make_server: Make) -> None:
    server = make_server(disconnect_grace="0.2")
    first = SSEClient(server.url, mint("carol"))
    second = SSEClient(server.url, mint("carol"))
    first.next("ready")
    second.next("ready")
    assert server.chat("carol", "one").status_code == 200
    for client in (first, second):
        assert client.next("message").data["text"] == "one"
        assert client.next("message").data["text"] == "Echo: one"
    first.close()
    wait_for(lambda: server.log_lines("sse.disconnect"), what="the first disconnect")
    # Three times the grace: nothing may be archived in it. Real time: the grace timer
    # runs in the server subprocess, whose clock no test can inject (tests/test_sessions.py
    # drives the same timer with a fake clock).
    time.sleep(0.6)
    assert server.archives("carol") == []
    second.close()
    wait_for(lambda: server.archives("carol"), what="the archive")
    time.sleep(0.4)  # two graces: a duplicate timer would have archived again (real time, too)
    assert len(server.archives("carol")) == 1
    assert len(server.log_lines("dialog.archived")) == 1


def test_reconnect_within_grace_continues_and_replays_missed(make_server: Make) -> None:
    server = make_server(disconnect_grace="2")
    sse = SSEClient(server.url, mint("dave"))
    sse.next("ready")
    server.chat("dave", "first")
    sse.next("message")
    last = sse.next("message")  # the echo of "first"
    sse.close()
    # Missed while away: a second device keeps chatting.
    server.chat("dave", "second")
    server.chat("dave", "third")
    with SSEClient(server.url, mint("dave"), last_event_id=last.id) as again:
        ready = again.next("ready")
        assert ready.data["dialog"] == last.data["dialog"]
        assert ready.data["messages"] == 6
        replayed = [again.next("message").data for _ in range(4)]
        assert [(m["seq"], m["text"]) for m in replayed] == [
            (3, "second"),
            (4, "Echo: second"),
            (5, "third"),
            (6, "Echo: third"),
        ]
        server.chat("dave", "fourth")
        live = again.next("message").data
        assert (live["seq"], live["text"]) == (7, "fourth")
        assert server.archives("dave") == []
        server.wait_log("session.resumed")
    wait_for(lambda: server.archives("dave"), timeout=10, what="the archive")
    doc = load(server.archives("dave")[0])
    assert [m["seq"] for m in doc["messages"]] == list(range(1, 9))


def test_reconnect_after_archive_gets_missed_messages_then_archived(make_server: Make) -> None:
    server = make_server(disconnect_grace="5")
    sse = SSEClient(server.url, mint("erin"))
    sse.next("ready")
    server.chat("erin", "hi")
    first = sse.next("message")
    sse.close()
    server.chat("erin", "while away")
    archived = httpx.post(server.url + "/dialog/archive", headers=server.headers("erin")).json()
    assert archived["messages"] == 4
    with SSEClient(server.url, mint("erin"), last_event_id=first.id) as again:
        assert again.next("ready").data["dialog"] is None
        texts = [again.next("message").data["text"] for _ in range(3)]
        assert texts == ["Echo: hi", "while away", "Echo: while away"]
        event = again.next("archived").data
        assert event == {
            "dialog": first.data["dialog"],
            "archive": archived["archive"],
            "reason": "user",
        }


def test_sweeper_archives_idle_dialog_and_tells_the_subscriber(make_server: Make) -> None:
    server = make_server(session_timeout="0.5", sweep_interval="0.2", disconnect_grace="60")
    with SSEClient(server.url, mint("frank")) as sse:
        sse.next("ready")
        server.chat("frank", "anyone there?")
        dialog = sse.next("message").data["dialog"]
        event = sse.next("archived", timeout=10).data
        assert event["reason"] == "timeout" and event["dialog"] == dialog
        assert load(server.archives("frank")[0])["reason"] == "timeout"
        # The next chat starts a new dialog.
        body = server.chat("frank", "back").json()
        assert body["dialog"] != dialog and body["seq"] == 1


def test_sigterm_archives_everyone_with_reason_shutdown(make_server: Make) -> None:
    server = make_server(disconnect_grace="60", shutdown_timeout="5")
    users = [f"u{i}" for i in range(5)]
    clients = [SSEClient(server.url, mint(u)) for u in users]
    for user, client in zip(users, clients, strict=True):
        client.next("ready")
        assert server.chat(user, f"hello from {user}").status_code == 200
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    for client in clients:
        assert client.next("shutdown", timeout=5).data
        assert client.closed.wait(5), "the stream ends after the shutdown event"
    assert server.wait(10) == 0
    assert time.monotonic() - started < 5
    for user in users:
        [archive] = server.archives(user)
        doc = load(archive)
        assert doc["reason"] == "shutdown"
        assert [m["text"] for m in doc["messages"]] == [
            f"hello from {user}",
            f"Echo: hello from {user}",
        ]
    log = server.log()
    assert "ASGI callable returned without completing response" not in log
    assert "Traceback" not in log
    assert len(server.log_lines("shutdown.done")) == 1
    disconnects = server.log_lines("sse.disconnect")
    assert disconnects and all("reason=shutdown" in line for line in disconnects)
    assert not any("reason=disconnect" in line for line in server.log_lines("dialog.archived"))


def test_sigkill_then_restart_recovers_the_dialog(make_server: Make, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = make_server(data=data, disconnect_grace="60")
    sse = SSEClient(server.url, mint("gina"))
    sse.next("ready")
    for text in ("one", "two", "three"):
        assert server.chat("gina", text).status_code == 200
    server.signal(signal.SIGKILL)
    server.wait()
    sse.close()
    assert (server.user_dir("gina") / "current.yaml").exists()
    restarted = make_server(data=data)
    [archive] = wait_for(lambda: restarted.archives("gina"), what="the recovery archive")
    doc = load(archive)
    assert doc["reason"] == "recovery"
    assert [m["text"] for m in doc["messages"]] == [
        "one",
        "Echo: one",
        "two",
        "Echo: two",
        "three",
        "Echo: three",
    ]


def test_second_chat_while_reply_streams_is_409(make_server: Make) -> None:
    server = make_server(echo_delay="0.2")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(server.chat, "hank", "a b c d e f")
        wait_for(lambda: server.log_lines("chat.append"), what="the first message")
        second = server.chat("hank", "impatient")
        assert second.status_code == 409
        assert second.json()["error"] == "reply_in_progress"
        assert slow.result().status_code == 200
    dialog = httpx.get(server.url + "/dialog", headers=server.headers("hank")).json()
    assert [m["text"] for m in dialog["messages"]] == ["a b c d e f", "Echo: a b c d e f"]


def test_stop_journals_the_partial_reply_as_interrupted(make_server: Make) -> None:
    server = make_server(echo_delay="0.2")
    with (
        SSEClient(server.url, mint("ivy")) as sse,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        sse.next("ready")
        pending = pool.submit(server.chat, "ivy", "one two three four five six seven")
        sse.next("reply")  # begin
        sse.next("reply")  # the first word
        stop = httpx.post(server.url + "/chat/stop", headers=server.headers("ivy"))
        assert stop.json() == {"stopped": True}
        body = pending.result().json()
        assert body["reply"]["interrupted"] is True
        end = sse.next("reply")
        while end.data["type"] != "end":
            end = sse.next("reply")
        assert end.data["interrupted"] is True
    dialog = httpx.get(server.url + "/dialog", headers=server.headers("ivy")).json()
    reply = dialog["messages"][1]
    assert reply["interrupted"] is True
    assert "seven" not in reply["text"] and reply["text"].startswith("Echo:")
    assert reply["upstream"] == "echo" and reply["first_token_ms"] >= 0  # a word had come


def test_race_many_users_chats_disconnects_sweeps_exactly_once(make_server: Make) -> None:
    """Concurrent chats from many users while connections drop and the sweeper fires:
    every message that got a 2xx is in exactly one file, in order."""
    server = make_server(
        disconnect_grace="0", session_timeout="0.3", sweep_interval="0.1", echo_delay="0"
    )
    users = [f"r{i}" for i in range(12)]
    accepted: dict[str, list[str]] = {u: [] for u in users}
    rng = random.Random(7)
    lock = threading.Lock()

    def worker(user: str) -> None:
        client = httpx.Client(base_url=server.url, headers=server.headers(user), timeout=30)
        sse: SSEClient | None = None
        for i in range(25):
            action = rng.random()
            if action < 0.2:
                if sse is not None:
                    sse.close()
                sse = SSEClient(server.url, mint(user))
            elif action < 0.3 and sse is not None:
                sse.close()
                sse = None
            elif action < 0.35:
                client.post("/dialog/archive")
            text = f"{user}-{i}"
            response = client.post("/chat", json={"message": text})
            if response.status_code == 200:
                with lock:
                    accepted[user].append(text)
            else:
                assert response.status_code == 409, response.text
        if sse is not None:
            sse.close()

    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(worker, users))
    # Read the files once the server has stopped: its sweeper may archive a current.yaml
    # between listing the files and reading them.
    server.stop()
    for user in users:
        on_disk = all_messages(server, user)
        asked = [text for _, _, role, text in on_disk if role == "user"]
        assert asked == accepted[user], user  # exactly once, in order
        replies = Counter(text for _, _, role, text in on_disk if role == "assistant")
        assert all(replies[f"Echo: {t}"] == 1 for t in accepted[user])
        # seq is contiguous within each file
        by_file: dict[str, list[int]] = {}
        for name, seq, _, _ in on_disk:
            by_file.setdefault(name, []).append(seq)
        for seqs in by_file.values():
            assert seqs == list(range(1, len(seqs) + 1))


def test_health_reports_connections_and_archive_counts(make_server: Make) -> None:
    server = make_server(disconnect_grace="0")
    with SSEClient(server.url, mint("hal")) as sse:
        sse.next("ready")
        health = httpx.get(server.url + "/health").json()
        assert health["connections"] == 1 and health["users"] == 1
        server.chat("hal", "x")
    wait_for(lambda: server.archives("hal"), what="the archive")
    health = httpx.get(server.url + "/health").json()
    assert health["archived"] == {"disconnect": 1}
    assert health["connections"] == 0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("shared")
    server = Server(
        data=base / "data", log_path=base / "server.log", settings={"max_message_bytes": "1000"}
    )
    server.start()
    yield server
    server.stop()


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


BAD_REQUESTS = [
    # (name, method, path, headers, body, expected status, expected error)
    ("no token", "POST", "/chat", {}, b'{"message":"x"}', 401, "missing_token"),
    ("expired", "POST", "/chat", "expired", b'{"message":"x"}', 401, "expired_token"),
    ("forged", "POST", "/chat", "forged", b'{"message":"x"}', 401, "bad_signature"),
    ("alg none", "POST", "/chat", "none", b'{"message":"x"}', 401, "bad_algorithm"),
    ("garbage token", "POST", "/chat", "garbage", b'{"message":"x"}', 401, "malformed_token"),
    ("malformed json", "POST", "/chat", "ok", b'{"message": ', 400, "bad_json"),
    ("not an object", "POST", "/chat", "ok", b'["message"]', 400, "bad_request"),
    ("missing message", "POST", "/chat", "ok", b'{"text":"x"}', 400, "bad_request"),
    ("number message", "POST", "/chat", "ok", b'{"message": 42}', 400, "bad_request"),
    ("empty message", "POST", "/chat", "ok", b'{"message": "   "}', 400, "empty_message"),
    ("invalid utf-8", "POST", "/chat", "ok", b'{"message": "\xff\xfe"}', 400, "bad_json"),
    ("lone surrogate", "POST", "/chat", "ok", b'{"message": "\\ud800"}', 400, "bad_text"),
    ("too large", "POST", "/chat", "ok", b'{"message": "' + b"x" * 1001 + b'"}', 413, "too_large"),
    ("huge body", "POST", "/chat", "ok", b'{"message": "' + b"x" * 10**6 + b'"}', 413, "too_large"),
    ("form post", "POST", "/chat", "form", b"message=x", 415, "unsupported_media_type"),
    ("traversal", "GET", "/archives/..%2Fcurrent.yaml", "ok", None, 404, "not_found"),
    ("dotdot", "GET", "/archives/../current.yaml", "ok", None, 404, "not_found"),
    ("not archive", "GET", "/archives/current.yaml", "ok", None, 404, "not_found"),
    ("missing archive", "GET", "/archives/2020-01-01-00-00-00.yaml", "ok", None, 404, "not_found"),
    ("admin route", "GET", "/users", "ok", None, 403, "forbidden"),
    ("unknown route", "GET", "/nope", "ok", None, 404, "not_found"),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "auth", "body", "status", "error"),
    BAD_REQUESTS,
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_is_refused_with_json_and_writes_nothing(
    shared: Server,
    name: str,
    method: str,
    path: str,
    auth: object,
    body: bytes | None,
    status: int,
    error: str,
) -> None:

    headers = {"Content-Type": "application/json"}
    token = (
        {
            "ok": mint("mallory"),
            "form": mint("mallory"),
            "expired": mint("mallory", ttl=-60),
            "forged": mint("mallory", secret="another-secret-of-enough-length-0123"),
            "none": sign({"sub": "mallory", "exp": int(time.time()) + 60}, None, "none"),
            "garbage": "not.a.jwt",
        }.get(auth)
        if isinstance(auth, str)
        else None
    )
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if auth == "form":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    before = _files(shared.data)
    mark = shared.log_mark()
    with httpx.Client(base_url=shared.url) as client:
        response = client.request(method, path, headers=headers, content=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert payload["error"] == error
    assert isinstance(payload["detail"], str) and payload["detail"].endswith(".")
    assert _files(shared.data) == before, "a refused request wrote nothing"
    # The line may land after the answer (the log is written once per event-loop turn).
    rejected = shared.wait_log("auth.rejected" if status == 401 else "request.rejected", since=mark)
    assert len(rejected) == 1, shared.log().splitlines()[mark:]
    assert f"status={status}" in rejected[0]
    if token:
        assert token not in shared.log()


def test_another_users_archive_is_404(shared: Server) -> None:
    shared.chat("owner", "secret plans")
    archived = httpx.post(shared.url + "/dialog/archive", headers=shared.headers("owner")).json()
    name = archived["archive"]
    mine = httpx.get(f"{shared.url}/archives/{name}", headers=shared.headers("owner"))
    assert mine.status_code == 200 and b"secret plans" in mine.content
    theirs = httpx.get(f"{shared.url}/archives/{name}", headers=shared.headers("thief"))
    assert theirs.status_code == 404
    as_json = httpx.get(
        f"{shared.url}/archives/{name}",
        headers={**shared.headers("owner"), "Accept": "application/json"},
    ).json()
    assert as_json["reason"] == "user" and as_json["messages"][0]["text"] == "secret plans"
    listing = httpx.get(shared.url + "/archives", headers=shared.headers("owner")).json()
    assert listing[0]["name"] == name and listing[0]["messages"] == 2
    admin = httpx.get(
        f"{shared.url}/users/owner/archives/{name}", headers=shared.headers("root", admin=True)
    )
    assert admin.status_code == 200 and admin.content == mine.content


def test_user_ids_that_look_like_paths_stay_under_users(shared: Server) -> None:
    for sub in ("../escape", "..", "/etc/passwd", "a/b", "auth0|42", ".hidden"):
        response = shared.chat(sub, "hi")
        assert response.status_code == 200, (sub, response.text)
    users_dir = shared.data / "users"
    for path in shared.data.rglob("current.yaml"):
        assert users_dir in path.parents
        assert path.parent.parent.parent == users_dir
    assert not (shared.data.parent / "escape").exists()
    assert not (shared.data / "escape").exists()


def test_access_log_never_shows_a_token(shared: Server) -> None:
    token = mint("leaky")
    httpx.get(f"{shared.url}/dialog?access_token={token}")
    httpx.get(f"{shared.url}/dialog", headers={"Authorization": f"Bearer {token}"})
    wait_for(lambda: "path=/dialog" in shared.log(), what="the access log line")
    assert token not in shared.log()
    assert "access_token=[redacted]" in shared.log()


def test_serve_runs_on_uvloop(make_server: Make) -> None:
    server = make_server()
    [start] = server.log_lines("server.start")
    assert " loop=uvloop" in start
