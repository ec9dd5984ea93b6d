"""GET /search against a real `archiver serve`: archives land, the index follows, and
who may search what."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import Server, wait_for
from tests.test_review import write_archive

Make = Callable[..., Server]


def search(server: Server, q: str, user: str = "alice", **params: Any) -> httpx.Response:
    admin = params.pop("admin", False)
    return httpx.get(
        server.url + "/search",
        params={"q": q, **params},
        headers=server.headers(user, admin=admin),
        timeout=10,
    )


def hits(server: Server, q: str, user: str = "alice", **params: Any) -> list[dict[str, Any]]:
    response = search(server, q, user, **params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["hits"]
    return found


def test_an_archive_is_searchable_once_it_lands(make_server: Make) -> None:
    server = make_server(echo_delay="0")
    assert server.chat("alice", "Where is my Refund for order #1042?").status_code == 200
    archived = httpx.post(
        server.url + "/dialog/archive", headers=server.headers("alice"), timeout=10
    ).json()
    found = wait_for(lambda: hits(server, "refund"), what="the archive in the index")
    first = found[0]
    assert first["user"] == "alice" and first["archive"] == archived["archive"]
    assert first["role"] == "user" and first["seq"] == 1
    assert first["snippet"][1::2] == ["Refund"]  # the echo reply says "Refund" too, later
    assert "".join(first["snippet"]) == "Where is my Refund for order #1042?"
    assert hits(server, '"order 1042" role:user')[0]["archive"] == archived["archive"]


def test_archives_present_at_start_and_copied_in_later_are_found(
    make_server: Make, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    write_archive(
        data,
        "alice",
        "2026-11-01-10-00-00.yaml",
        [("user", "chargeback please")],
        ended="2026-11-01T10:00:00.000Z",
    )
    server = make_server(data=data, sweep_interval="0.3")
    wait_for(lambda: hits(server, "chargeback"), what="the start-up catch-up")
    # Copied in by hand (or written by another process): each sweep's refresh finds it.
    write_archive(
        data,
        "alice",
        "2026-11-02-10-00-00.yaml",
        [("user", "warranty claim")],
        ended="2026-11-02T10:00:00.000Z",
    )
    found = wait_for(lambda: hits(server, "warranty"), what="the copied-in archive")
    assert [h["archive"] for h in found] == ["2026-11-02-10-00-00.yaml"]
    (data / "users" / "alice" / "dialogs" / "archived" / "2026-11-01-10-00-00.yaml").unlink()
    wait_for(lambda: not hits(server, "chargeback"), what="the deleted archive to go")


def test_a_user_searches_only_their_own_archives_and_an_admin_everyones(
    make_server: Make, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    for n, user in enumerate(["alice", "bob", "auth0|42"]):
        write_archive(
            data,
            user,
            f"2026-11-0{n + 1}-10-00-00.yaml",
            [("user", f"refund {user}")],
            ended=f"2026-11-0{n + 1}T10:00:00.000Z",
        )
    server = make_server(data=data)
    wait_for(lambda: len(hits(server, "refund", "ops", admin=True)) == 3, what="3 archives")
    assert {h["user"] for h in hits(server, "refund", "alice")} == {"alice"}
    refused = search(server, "refund user:bob", "alice")
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    own = hits(server, "refund user:alice", "alice")
    assert [h["user"] for h in own] == ["alice"]
    narrowed = hits(server, 'refund user:"auth0|42"', "ops", admin=True)
    assert [h["user"] for h in narrowed] == ["auth0|42"]


def test_pages_follow_the_cursor_until_there_is_none(make_server: Make, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for n in range(7):
        write_archive(
            data,
            "alice",
            f"2026-11-0{n + 1}-10-00-00.yaml",
            [("user", "refund")],
            ended=f"2026-11-0{n + 1}T10:00:00.000Z",
        )
    server = make_server(data=data)
    wait_for(lambda: len(hits(server, "refund", limit="50")) == 7, what="7 archives")
    seen: list[str] = []
    cursor = ""
    while True:
        body = search(server, "refund", limit="3", cursor=cursor).json()
        seen += [h["archive"] for h in body["hits"]]
        if body["next"] is None:
            break
        cursor = body["next"]
    assert len(seen) == 7 and len(set(seen)) == 7
    # Equal relevance: the newest archive first.
    assert seen == sorted(seen, reverse=True)


def test_a_malformed_request_is_a_400_with_a_sentence(make_server: Make) -> None:
    server = make_server()
    for params, code in [
        ({"q": '"refund'}, "bad_query"),
        ({"q": ""}, "bad_query"),
        ({"q": "!!!"}, "bad_query"),
        ({"q": "x role:robot"}, "bad_query"),
        ({"q": "x since:tomorrow"}, "bad_query"),
        ({"q": "x", "limit": "0"}, "bad_limit"),
        ({"q": "x", "limit": "abc"}, "bad_limit"),
        ({"q": "x", "cursor": "-1"}, "bad_cursor"),
        ({"q": "x", "cursor": "12"}, "bad_cursor"),  # an offset, as cursors once were
        ({"q": "x", "cursor": "1.2.3"}, "bad_cursor"),
        ({"q": "x", "cursor": "9223372036854775808.0"}, "bad_cursor"),  # past SQLite's ints
    ]:
        q = params.pop("q")
        response = search(server, q, **params)
        assert response.status_code == 400, (q, params, response.text)
        body = response.json()
        assert body["error"] == code and body["detail"].endswith("."), body
    assert "request.failed" not in server.log()


def test_search_turned_off_says_so(make_server: Make) -> None:
    server = make_server(search_index="false")
    response = search(server, "refund")
    assert response.status_code == 503 and response.json()["error"] == "search_off"
    assert not (server.data / ".index").exists()
