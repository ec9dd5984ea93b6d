"""The front door: refusals before authentication, and the handshake gate per address."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive

from archiver.admission import Admission
from archiver.app import create_app
from archiver.config import Settings
from archiver.direct import Direct, Stack
from archiver.frontdoor import FrontDoor, Handshakes
from tests.helpers import SECRET, mint


def scope(path: str, client: str = "10.0.0.1", method: str = "GET") -> dict[str, Any]:
    return {"type": "http", "path": path, "method": method, "client": (client, 5000)}


async def _nothing() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_handshakes_beyond_the_places_wait_in_order_and_other_sources_go_on() -> None:
    async def main() -> None:
        gate = Handshakes(per_source=2)
        order: list[str] = []

        async def one(source: str, name: str, hold: asyncio.Event) -> None:
            await gate.enter(source)
            order.append(name)
            await hold.wait()
            gate.leave(source)

        holds = {n: asyncio.Event() for n in ("a1", "a2", "a3", "a4", "b1")}
        tasks = [asyncio.create_task(one("a" if n[0] == "a" else "b", n, holds[n])) for n in holds]
        await asyncio.sleep(0)
        assert order == ["a1", "a2", "b1"], "two of a, and b at once"
        assert gate.in_flight("a") == 2 and gate.waiting("a") == 2
        tasks[2].cancel()  # a3 gives up while waiting: it takes no place
        holds["a1"].set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert order == ["a1", "a2", "b1", "a4"]
        for hold in holds.values():
            hold.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert gate.in_flight("a") == gate.in_flight("b") == 0 and gate._busy == {}
        assert gate._waiting == {}

    asyncio.run(main())


def test_a_refusal_is_the_usual_error_and_only_streams_and_chats_are_judged() -> None:
    admission = Admission(max_streams_per_ip=1)
    admission.opened("10.0.0.1")
    door = FrontDoor(admission, handshakes_per_ip=4)
    refused = door.refuse(scope("/subscribe"))
    assert refused is not None and refused.status == 429
    assert refused.code == "too_many_streams" and refused.detail.endswith(".")
    assert refused.headers == {"Retry-After": "5"}
    # Another address, a chat (under its rate), another route: let in.
    for s in (scope("/subscribe", "10.0.0.2"), scope("/chat", method="POST"), scope("/health")):
        assert door.refuse(s) is None


def test_the_gate_holds_stream_handshakes_only() -> None:
    async def main() -> None:
        door = FrontDoor(Admission(), handshakes_per_ip=1)
        assert door.handshakes is not None
        first = await door.enter(scope("/subscribe"))
        assert first == "10.0.0.1" and door.handshakes.in_flight("10.0.0.1") == 1
        assert await door.enter(scope("/chat", method="POST")) is None, "chats are not gated"
        second = asyncio.create_task(door.enter(scope("/subscribe")))
        await asyncio.sleep(0)
        assert not second.done() and door.handshakes.waiting("10.0.0.1") == 1
        door.leave(first)
        assert await second == "10.0.0.1"
        door.leave("10.0.0.1")
        door.leave(None)  # nothing was taken: nothing to give back
        assert door.handshakes.in_flight("10.0.0.1") == 0

    asyncio.run(main())


@pytest.mark.parametrize("failing", [False, True])
def test_a_stream_holds_its_place_only_until_its_response_is_ready(
    failing: bool, tmp_path: Path
) -> None:
    """Through :class:`Direct`: the place is given back when the endpoint returns or
    raises, before the response (a stream for its whole life) goes out."""
    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET, handshakes_per_ip=1)
    places: list[int] = []

    async def endpoint(conn: HTTPConnection, receive: Receive) -> Response:
        assert direct.front.handshakes is not None
        places.append(direct.front.handshakes.in_flight("10.0.0.1"))
        if failing:
            raise RuntimeError("before any response")
        return PlainTextResponse("ok")

    direct = Direct(endpoint, frozenset({"GET"}), Stack(settings))
    sent: list[Message] = []

    async def send(message: Message) -> None:
        assert direct.front.handshakes is not None
        if message["type"] == "http.response.start":
            places.append(direct.front.handshakes.in_flight("10.0.0.1"))
        sent.append(message)

    request = {**scope("/subscribe"), "headers": [], "query_string": b""}
    if failing:
        with pytest.raises(RuntimeError):
            asyncio.run(direct(request, _nothing, send))
        assert sent[0]["status"] == 500
    else:
        asyncio.run(direct(request, _nothing, send))
        assert sent[0]["status"] == 200
    assert places == [1, 0], "held while the endpoint ran, free before the response went out"


def test_over_its_rate_an_address_is_refused_before_its_token_is_looked_at(
    tmp_path: Path,
) -> None:
    """In the app: with the rate used up, a bad token gets the rate's 429 (with the
    security headers), not a 401: the token was never verified."""
    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET, rate_limit_per_ip=1)

    async def main() -> list[httpx.Response]:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("10.0.0.9", 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                good = {"Authorization": f"Bearer {mint('alice')}"}
                bad = {"Authorization": "Bearer not-a-token"}
                return [
                    await http.post("/chat", json={"message": "hi"}, headers=headers)
                    for headers in (good, bad)
                ]

    first, second = asyncio.run(main())
    assert first.status_code == 200, "the route admitted the first: it took the rate's one"
    assert second.status_code == 429 and second.json()["error"] == "rate_limited_address"
    assert second.headers["x-content-type-options"] == "nosniff"
    assert int(second.headers["retry-after"]) >= 1


def test_zero_turns_the_gate_off() -> None:
    assert FrontDoor(Admission(), 0).handshakes is None
