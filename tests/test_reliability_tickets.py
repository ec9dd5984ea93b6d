"""Stream tickets and guest sessions against a real server. A ticket keeps the token out of
URLs; it is good for one stream, for one user, on any instance sharing the data directory.
A guest session is a short-lived token for an anonymous visitor, refreshable, rate-limited."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.helpers import RedisServer, Server, SSEClient, mint, remember

Make = Callable[..., Server]


def ticket_for(server: Server, user: str) -> str:
    answer = httpx.post(server.url + "/subscribe/ticket", headers=server.headers(user), timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["expires_in"] == 30
    return str(body["ticket"])


def stream_with(server: Server, ticket: str) -> SSEClient:
    return SSEClient(server.url, token="", path=f"/subscribe?ticket={ticket}")


def test_a_ticket_opens_one_stream_for_its_user_once(make_server: Make) -> None:
    server = make_server()
    ticket = ticket_for(server, "alice")
    first = stream_with(server, ticket)
    assert first.next("ready").data["user"] == "alice"
    again = httpx.get(server.url + f"/subscribe?ticket={ticket}", timeout=10)
    assert again.status_code == 401 and again.json()["error"] == "bad_ticket"
    assert "used already" in again.json()["detail"]
    first.close()
    log = server.log()
    assert ticket.split(".")[1] not in log, "a ticket in a log line"


def test_another_instance_on_the_same_data_directory_redeems_it(
    make_server: Make, tmp_path: Path
) -> None:
    one = make_server()
    two = make_server(data=tmp_path / "data")
    stream = stream_with(two, ticket_for(one, "bob"))
    assert stream.next("ready").data["user"] == "bob"
    stream.close()


def test_with_a_redis_broker_a_ticket_redeemed_on_one_instance_is_refused_on_the_other(
    make_server: Make, tmp_path: Path, redis_server: RedisServer
) -> None:
    x, y = (make_server(data=tmp_path / "data", broker=redis_server.url) for _ in range(2))
    reused = {}
    for first, second in ((x, y), (y, x)):
        ticket = ticket_for(first, "carol")
        stream = stream_with(first, ticket)
        assert stream.next("ready").data["user"] == "carol"
        again = httpx.get(second.url + f"/subscribe?ticket={ticket}", timeout=10)
        assert again.status_code == 401, again.text
        reused[second.port] = again.json()
        stream.close()
    # The same error as a ticket used twice on one instance.
    same = ticket_for(x, "carol")
    stream = stream_with(x, same)
    stream.next("ready")
    twice = httpx.get(x.url + f"/subscribe?ticket={same}", timeout=10)
    stream.close()
    assert list(reused.values()) == [twice.json()] * 2, (reused, twice.json())
    assert twice.json()["error"] == "bad_ticket"
    print(f"\nticket across 2 instances (Redis): refused on the other, both ways: {twice.json()}")


def test_bad_tickets_and_tokens_in_the_query_are_refused(make_server: Make, tmp_path: Path) -> None:
    server = make_server()
    for bad in ["x", "a.b", ticket_for(make_server(data=tmp_path / "other"), "eve")]:
        refused = httpx.get(server.url + "/subscribe", params={"ticket": bad}, timeout=10)
        assert refused.status_code == 401 and refused.json()["error"] == "bad_ticket", bad
    in_query = httpx.post(
        server.url + "/subscribe/ticket", params={"access_token": mint("eve")}, timeout=10
    )
    assert in_query.status_code == 400
    anonymous = httpx.post(server.url + "/subscribe/ticket", timeout=10)
    assert anonymous.status_code == 401
    assert not (server.data / "users").exists() or not any((server.data / "users").iterdir())
    assert (server.data / ".ticket-secret").stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------------------
# Guest sessions (ARCHIVER_GUEST_SESSIONS=true): POST /session


def new_guest(server: Server, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(server.url + "/session", headers=headers or {}, timeout=10)


def test_guest_sessions_are_off_by_default_with_a_sentence(make_server: Make) -> None:
    refused = new_guest(make_server())
    assert refused.status_code == 404
    assert "ARCHIVER_GUEST_SESSIONS" in refused.json()["detail"]


def test_a_guest_chats_refreshes_and_stays_the_same_user(make_server: Make) -> None:
    server = make_server(guest_sessions="true", guest_ttl="120")
    first = new_guest(server)
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    body = first.json()
    assert body["user"].startswith("guest-") and body["expires_in"] == 120
    auth = {"Authorization": f"Bearer {remember(body['token'])}"}
    chat = httpx.post(server.url + "/chat", json={"message": "hi"}, headers=auth, timeout=30)
    assert chat.status_code == 200
    refreshed = new_guest(server, auth)
    assert refreshed.status_code == 200 and refreshed.json()["user"] == body["user"]
    remember(refreshed.json()["token"])
    assert server.wait_log("guest.created") and server.wait_log("guest.refreshed")
    other = new_guest(server).json()
    remember(other["token"])
    assert other["user"] != body["user"]


def test_a_non_guest_token_is_not_refreshed_and_a_bad_one_is_401(make_server: Make) -> None:
    server = make_server(guest_sessions="true")
    assert new_guest(server, server.headers("alice")).status_code == 403
    assert new_guest(server, server.headers("root", admin=True)).status_code == 403
    assert new_guest(server, {"Authorization": "Bearer nonsense"}).status_code == 401


def test_new_guests_are_rate_limited_per_address(make_server: Make) -> None:
    server = make_server(guest_sessions="true", guest_rate_per_ip="5")
    answers = [new_guest(server) for _ in range(8)]
    for answer in answers:
        if answer.status_code == 200:
            remember(answer.json()["token"])
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 3
    assert answers[-1].json()["error"] == "too_many_guests"
    assert int(answers[-1].headers["Retry-After"]) >= 1


def test_guest_sessions_need_an_hs256_secret() -> None:
    import pytest

    from archiver.app import create_app
    from archiver.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="ARCHIVER_GUEST_SESSIONS"):
        create_app(
            Settings(guest_sessions=True, jwt_algorithm="RS256", jwt_public_key="-----BEGIN x")
        )
