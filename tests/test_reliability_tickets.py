"""Stream tickets against a real server: the token stays out of URLs; a ticket is good for
one stream, for one user, on any instance sharing the data directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.helpers import Server, SSEClient, mint

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
