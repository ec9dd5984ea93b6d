"""The front door: refusals before authentication, and the handshake gate per address."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from archiver.admission import Admission
from archiver.frontdoor import FrontDoor, Handshakes


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


def test_a_refusal_is_answered_before_the_app_with_the_usual_json() -> None:
    admission = Admission(max_streams_per_ip=1)
    admission.opened("10.0.0.1")
    reached: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    door = FrontDoor(app, admission, handshakes_per_ip=4)
    asyncio.run(door(scope("/subscribe"), _nothing, send))
    assert reached == [], "refused before authentication and routing"
    assert sent[0]["status"] == 429
    headers = dict(sent[0]["headers"])
    assert headers[b"retry-after"] == b"5" and headers[b"content-type"] == b"application/json"
    body = json.loads(sent[1]["body"])
    assert body["error"] == "too_many_streams" and body["detail"].endswith(".")
    assert int(headers[b"content-length"]) == len(sent[1]["body"])
    # Another address, a chat, another route: on to the app.
    for s in (scope("/subscribe", "10.0.0.2"), scope("/chat", method="POST"), scope("/health")):
        asyncio.run(door(s, _nothing, send))
    assert reached == ["/subscribe", "/chat", "/health"]


@pytest.mark.parametrize("failing", [False, True])
def test_a_stream_holds_its_place_only_until_its_response_starts(failing: bool) -> None:
    async def main() -> None:
        started = asyncio.Event()
        finish = asyncio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if failing:
                raise RuntimeError("before any response")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            started.set()
            await finish.wait()  # the stream goes on

        async def send(message: Message) -> None:
            pass

        door = FrontDoor(app, Admission(), handshakes_per_ip=1)
        assert door.handshakes is not None
        task = asyncio.create_task(door(scope("/subscribe"), _nothing, send))
        if failing:
            with pytest.raises(RuntimeError):
                await task
        else:
            await started.wait()
        assert door.handshakes.in_flight("10.0.0.1") == 0
        finish.set()
        if not failing:
            await task

    asyncio.run(main())


def test_zero_turns_the_gate_off() -> None:
    assert FrontDoor(lambda s, r, w: None, Admission(), 0).handshakes is None  # type: ignore[arg-type,return-value]
