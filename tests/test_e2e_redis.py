"""End to end with ARCHIVER_BROKER=redis://: real `archiver serve` instances sharing one
data directory and one real redis-server, behind a real nginx running the shipped
deploy/nginx-roundrobin.conf (ports and paths changed only, as tests/test_e2e_nginx.py
does): any instance serves any request, so a user's stream and chats land where they
land.

Which instance took a request is read from the instances' own logs (`sse.connect`,
`chat.append`). The SSE client is tests/helpers.SSEClient, browser-like (reconnects with
Last-Event-ID after 0.1 s). Each test prints what it counted (docs/reliability.md).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import (
    LOOPBACK,
    Layout,
    RedisServer,
    Server,
    SSEClient,
    free_port,
    mint,
    nginx_binary,
    render_conf,
    soak,
    tail,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
ROUND_ROBIN = REPO / "deploy" / "nginx-roundrobin.conf"
LEASE = "2"  # seconds: a dead instance's connections leave presence within it
GRACE = "1.5"

pytestmark = pytest.mark.timeout(180)


class Nginx:
    """deploy/nginx-roundrobin.conf in a real nginx, in front of ``servers``."""

    def __init__(self, root: Path, servers: list[Server]) -> None:
        self.layout = Layout(
            prefix=root / "nginx",
            http_port=free_port(),
            upstream_ports=tuple(s.port for s in servers),
        )
        (self.layout.prefix / "temp").mkdir(parents=True, exist_ok=True)
        conf = self.layout.prefix / "nginx.conf"
        conf.write_text(render_conf(ROUND_ROBIN.read_text("utf-8"), self.layout), "utf-8")
        self.url = f"http://{LOOPBACK}:{self.layout.http_port}"
        out = (root / "nginx-stderr.log").open("ab")
        self.proc = subprocess.Popen(
            [nginx_binary(), "-p", str(self.layout.prefix), "-c", str(conf), "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        wait_for(self._up, 15, "GET /health through nginx", lambda: tail(self.layout.error_log))

    def _up(self) -> bool:
        assert self.proc.poll() is None, tail(self.layout.error_log)
        try:
            return httpx.get(self.url + "/health", timeout=2).is_success
        except httpx.HTTPError:
            return False

    def chat(self, token: str, text: str) -> httpx.Response:
        return httpx.post(
            self.url + "/chat",
            json={"message": text},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def cluster(
    tmp_path: Path, redis_server: RedisServer, make_server: Callable[..., Server]
) -> Iterator[Callable[..., tuple[list[Server], Nginx]]]:
    # redis_server first: torn down after the instances, so they stop with their broker.
    made: list[Nginx] = []

    def make(count: int = 2, **settings: str) -> tuple[list[Server], Nginx]:
        options = {
            "broker": redis_server.url,
            "broker_lease": LEASE,
            "disconnect_grace": GRACE,
            "ping_interval": "1",
            **settings,
        }
        servers = [make_server(data=tmp_path / "data", **options) for _ in range(count)]
        nginx = Nginx(tmp_path, servers)
        made.append(nginx)
        return servers, nginx

    yield make
    for nginx in made:
        nginx.stop()


def on(servers: list[Server], event: str, user: str, since: list[int] | None = None) -> list[int]:
    """How many ``event`` lines about ``user`` each server logged (after ``since``)."""
    marks = since or [0] * len(servers)
    return [
        sum(f" user={user} " in line + " " for line in s.log_lines(event, mark))
        for s, mark in zip(servers, marks, strict=True)
    ]


def where(servers: list[Server], event: str, user: str, since: list[int] | None = None) -> int:
    """The index of the one server that logged ``event`` about ``user`` (waits for it)."""
    found = wait_for(
        lambda: [i for i, n in enumerate(on(servers, event, user, since)) if n],
        what=f"{event} user={user} on some instance",
    )
    assert len(found) == 1, f"{event} user={user} on {found}"
    return found[0]


def subscribe_on(
    nginx: Nginx, servers: list[Server], token: str, user: str, want: int | None
) -> tuple[SSEClient, int]:
    """A stream through nginx; with ``want``, opened again until it lands on that instance."""
    for _ in range(6):
        marks = [s.log_mark() for s in servers]
        client = SSEClient(nginx.url, token, reconnect=True)
        client.next("ready")
        index = where(servers, "sse.connect", user, marks)
        if want is None or index == want:
            return client, index
        client.close()
    raise AssertionError(f"round robin never put {user}'s stream on instance {want}")


def message_ids(client: SSEClient) -> list[str | None]:
    return [e.id for e in client.seen if e.event == "message"]


def archives_of(server: Server, user: str) -> list[str]:
    reasons = []
    for path in server.archives(user):
        text = path.read_text()
        reasons.append(text.split("reason: ", 1)[1].split()[0])
    return reasons


# -- the two scenarios ----------------------------------------------------------


def test_a_chat_taken_by_another_instance_streams_live_to_the_tab(cluster: Callable) -> None:
    servers, nginx = cluster()
    user, token = "live", mint("live")
    tab, x = subscribe_on(nginx, servers, token, user, None)
    landed = Counter()
    replies = []
    for i in range(6):
        marks = [s.log_mark() for s in servers]
        response = nginx.chat(token, f"question {i}")
        assert response.status_code == 200, response.text
        landed[where(servers, "reply.done", user, marks)] += 1
        body = response.json()
        replies.append(f"{body['dialog']}:{body['reply']['seq']}")
    assert len(landed) == 2, f"round robin sent every chat to one instance: {landed}"
    wait_for(
        lambda: replies[-1] in message_ids(tab), what="the last reply, live", show=tab.describe
    )
    ids = message_ids(tab)
    assert len(ids) == len(set(ids)) == 12, tab.describe()  # each message once, none missing
    assert tab.find("reply", lambda e: e.data["type"] == "end").__len__() == 6
    assert len(tab.find("open")) == 1  # live: never ended, nothing replayed
    print(f"\nchats on the tab's instance {x}: {landed[x]}, on the other: {landed[1 - x]}")
    assert not any(s.log_lines("session.moved") for s in servers)


def test_closing_one_of_two_tabs_archives_nothing_closing_both_archives_once(
    cluster: Callable,
) -> None:
    servers, nginx = cluster()
    user = "twotabs"
    tab_a, x = subscribe_on(nginx, servers, mint(user), user, None)
    tab_b, y = subscribe_on(nginx, servers, mint(user), user, 1 - x)  # another token, too
    assert nginx.chat(mint(user), "hello from one of two tabs").status_code == 200
    marks = [s.log_mark() for s in servers]
    tab_b.close()
    servers[y].wait_log("presence.elsewhere", since=marks[y], timeout=15)
    assert not any(s.archives(user) for s in servers)
    assert tab_a.find("archived") == []
    response = nginx.chat(mint(user), "still the same dialog")
    assert response.json()["seq"] == 3
    tab_a.close()
    wait_for(lambda: servers[0].archives(user), timeout=15, what="the archive")
    servers[x].wait_log("dialog.archived", since=marks[x], timeout=15)
    archived = [len(s.log_lines("dialog.archived", m)) for s, m in zip(servers, marks, strict=True)]
    assert sum(archived) == 1 and archives_of(servers[0], user) == ["disconnect"]
    print(f"\narchived lines per instance: {archived}; archives: {archives_of(servers[0], user)}")
    assert not any(s.log_lines("session.moved") for s in servers)


# -- faults -----------------------------------------------------------------------------


def test_unreachable_broker_at_start_refuses_in_one_line(
    make_server: Callable[..., Server],
) -> None:
    url = f"redis://archiver:hunter2@127.0.0.1:{free_port()}/0"
    server = make_server(start=False, broker=url)
    server.spawn()
    code = server.wait(timeout=30)
    log = server.log()
    lines = [line for line in log.splitlines() if "ARCHIVER_BROKER" in line]
    assert code != 0, log
    assert len(lines) == 1, log
    assert lines[0].startswith("Error: ARCHIVER_BROKER redis://archiver:***@127.0.0.1:"), lines
    assert "Connection" in lines[0] and "hunter2" not in log


def test_redis_lost_and_restarted_empty_local_streams_go_on_nothing_lost_or_twice(
    cluster: Callable, redis_server: RedisServer
) -> None:
    servers, nginx = cluster()
    user = "lost"
    tab_x, x = subscribe_on(nginx, servers, mint(user), user, None)
    tab_y, _ = subscribe_on(nginx, servers, mint(user), user, 1 - x)
    other, _ = subscribe_on(nginx, servers, mint("closes"), "closes", x)
    assert servers[x].chat(user, "before").status_code == 200
    redis_server.stop()
    for s in servers:
        s.wait_log("broker.lost", timeout=20)
    marks = [s.log_mark() for s in servers]
    # Local streams go on: chats on x reach the tab on x live.
    sent = [servers[x].chat(user, f"while lost {i}").json() for i in range(3)]
    wait_for(
        lambda: f"{sent[-1]['dialog']}:{sent[-1]['reply']['seq']}" in message_ids(tab_x),
        what="x's replies on x's tab while Redis is lost",
        show=tab_x.describe,
    )
    # No disconnect archive for a user whose presence cannot be checked.
    other.close()
    servers[x].wait_log("presence.unknown", since=marks[x], timeout=15)
    redis_server.start()  # empty: nothing was saved
    for s in servers:
        s.wait_log("broker.recovered", timeout=20)
    # The tab on y missed x's events: it is resynced, reconnects and replays them.
    last = f"{sent[-1]['dialog']}:{sent[-1]['reply']['seq']}"
    wait_for(
        lambda: last in message_ids(tab_y),
        timeout=20,
        what="the replay on y's tab",
        show=tab_y.describe,
    )
    dialog = sent[0]["dialog"]
    for tab in (tab_x, tab_y):
        ids = message_ids(tab)
        assert len(ids) == len(set(ids)), f"a message twice: {tab.describe()}"
        assert {f"{dialog}:{n}" for n in range(1, 9)} <= set(ids), tab.describe()
    # Presence is back (written again within a renewal): closing one of the two tabs,
    # wherever their reconnects put them, archives nothing.
    tab_y.close()
    time.sleep(float(GRACE) + 2)  # the only wait: that no archive happens
    counts = {
        e: [len(s.log_lines(e)) for s in servers] for e in ("broker.lost", "broker.recovered")
    }
    assert counts == {"broker.lost": [1, 1], "broker.recovered": [1, 1]}, counts
    assert not any(s.archives(user) for s in servers) and not servers[0].archives("closes")
    print(f"\nlog lines {counts}; 8 of 8 messages on both tabs, none twice")


def test_sigkilled_instance_users_go_on_elsewhere_in_the_same_dialog(cluster: Callable) -> None:
    servers, nginx = cluster()
    user, stays = "moves", "stays"
    tab, x = subscribe_on(nginx, servers, mint(user), user, None)
    left, _ = subscribe_on(nginx, servers, mint(stays), stays, x)
    first = servers[x].chat(user, "hello before the crash").json()
    assert servers[x].chat(stays, "my tab goes with the crash").status_code == 200
    left.reconnect = False  # this tab does not come back: recovery archives its dialog
    servers[x].kill()
    survivor = servers[1 - x]
    # The tab reconnects through nginx (x refuses: the next instance) and goes on.
    wait_for(
        lambda: len(tab.find("ready")) >= 2, timeout=20, what="the tab back", show=tab.describe
    )
    again = None
    for _ in range(4):  # a POST to the dead instance is not retried by nginx: 502
        response = nginx.chat(mint(user), "hello after the crash")
        if response.status_code == 200:
            again = response.json()
            break
    assert again is not None and again["dialog"] == first["dialog"] and again["seq"] == 3
    # Within the lease the dead instance leaves presence; one survivor recovers it.
    line = survivor.wait_log("instance.dead", timeout=20)[0]
    assert "archived=1" in line, line
    assert archives_of(survivor, stays) == ["recovery"] and survivor.archives(user) == []
    reply = f"{again['dialog']}:{again['reply']['seq']}"
    wait_for(lambda: reply in message_ids(tab), what="the reply live on the moved tab")
    print(f"\n{line.strip()}")


def test_sigterm_leaves_dialogs_of_users_who_reconnect_elsewhere(cluster: Callable) -> None:
    servers, nginx = cluster()
    user, leaves = "rolls", "leaves"
    tab, x = subscribe_on(nginx, servers, mint(user), user, None)
    gone, _ = subscribe_on(nginx, servers, mint(leaves), leaves, x)
    gone.reconnect = False  # this browser does not come back
    first = servers[x].chat(user, "before the restart").json()
    assert servers[x].chat(leaves, "me too").status_code == 200
    servers[x].signal(signal.SIGTERM)
    assert servers[x].wait(timeout=30) == 0
    survivor = servers[1 - x]
    wait_for(
        lambda: len(tab.find("ready")) >= 2, timeout=20, what="the tab back", show=tab.describe
    )
    # Archived once: by the shutdown, or by the grace of a tab subscribe_on closed on the
    # survivor (that tab was closed too, and nothing of the user is left anywhere).
    wait_for(lambda: survivor.archives(leaves), what="the leaving user's archive")
    assert archives_of(survivor, leaves) in (["shutdown"], ["disconnect"])
    assert survivor.archives(user) == []
    assert "presence.elsewhere user=rolls" in servers[x].log()
    again = nginx.chat(mint(user), "after the restart").json()
    assert again["dialog"] == first["dialog"] and again["seq"] == 3
    print(f"\nshutdown archived {archives_of(survivor, leaves)}; {user} went on at seq 3")


def test_many_users_two_tabs_each_round_robin_every_event_once(cluster: Callable) -> None:
    """Users chatting in threads, each with a tab on each instance: every message reaches
    every tab exactly once, live, and is journaled once."""
    import threading

    servers, nginx = cluster()
    users = [f"many{i}" for i in range(soak(6, 24))]
    chats = soak(8, 40)
    tabs = {}
    for user in users:
        a, x = subscribe_on(nginx, servers, mint(user), user, None)
        b, _ = subscribe_on(nginx, servers, mint(user), user, 1 - x)
        tabs[user] = (a, b)
    answers: dict[str, list[dict]] = {u: [] for u in users}
    failures: list[str] = []

    def talk(user: str) -> None:
        token = mint(user)
        for i in range(chats):
            response = nginx.chat(token, f"{user} says {i}")
            if response.status_code != 200:
                failures.append(f"{user} {i}: {response.status_code} {response.text[:80]}")
                continue
            answers[user].append(response.json())

    threads = [threading.Thread(target=talk, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    events = 0
    for user in users:
        dialog = answers[user][0]["dialog"]
        want = {f"{dialog}:{n}" for n in range(1, 2 * chats + 1)}
        assert {a["dialog"] for a in answers[user]} == {dialog}
        for tab in tabs[user]:
            wait_for(lambda t=tab, w=want: w <= set(message_ids(t)), what=f"{user}'s events")
            ids = message_ids(tab)
            assert len(ids) == len(set(ids)), f"an event twice: {tab.describe()}"
            assert len(tab.find("open")) == 1, tab.describe()
            events += len(ids)
        doc = yaml.safe_load(servers[0].user_dir(user).joinpath("current.yaml").read_text())
        asked = sorted(m["text"] for m in doc["messages"] if m["role"] == "user")
        assert asked == sorted(f"{user} says {i}" for i in range(chats))  # each once
    total = len(users) * chats
    print(f"\n{len(users)} users x 2 tabs, {total} chats: {events} messages live, none twice")


def test_the_round_robin_config_is_the_hashing_one_without_the_hash() -> None:
    """deploy/nginx-roundrobin.conf keeps every proxy setting of deploy/nginx.conf (SSE
    unbuffered, client aborts passed on, no query in the access log); only routing
    differs."""
    import re

    def directives(text: str) -> list[str]:
        lines = (re.sub(r"#.*", "", line).strip() for line in text.splitlines())
        return [line for line in lines if line]

    hashing = directives((REPO / "deploy" / "nginx.conf").read_text("utf-8"))
    round_robin = directives(ROUND_ROBIN.read_text("utf-8"))
    routing = [d for d in hashing if "archiver_route_key" in d or "archiver_bearer_token" in d]
    assert "hash $archiver_route_key consistent;" in routing
    assert not any("archiver_route_key" in d or "hash " in d for d in round_robin)
    kept = [d for d in hashing if d not in routing and not d.startswith(('"~', "default"))]
    missing = [d for d in kept if d not in round_robin and d != "}"]
    assert not missing, missing
