"""EventStream driven directly as an ASGI callable, with a scripted client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from archiver.hub import PING, Event, Inbox
from archiver.stream import EventStream
from tests.helpers import until


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Client:
    """The ASGI side of one request: what the app sent, and a disconnect to trigger."""

    def __init__(self, stuck_after: int | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.stuck_after = stuck_after  # sends after this many never complete
        self.requested = False

    async def receive(self) -> dict[str, Any]:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.stuck_after is not None and len(self.sent) >= self.stuck_after:
            await asyncio.Event().wait()
        self.sent.append(message)

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    @property
    def ended(self) -> bool:
        return bool(self.sent) and self.sent[-1].get("more_body") is False


class Recorder:
    def __init__(self, ping: float | None = None) -> None:
        self.inbox: Inbox | None = None
        self.closed: list[Inbox] = []
        self.ping = ping

    def open(self) -> Inbox:
        self.inbox = Inbox(user="u1")
        return self.inbox

    async def events(self, inbox: Inbox) -> AsyncGenerator[list[Event], None]:
        yield [Event("ready", {"connection": inbox.id})]
        while (events := await inbox.take(self.ping)) is not None:
            yield events

    def close(self, inbox: Inbox) -> None:
        self.closed.append(inbox)

    def stream(self, send_timeout: float = 5.0) -> EventStream:
        return EventStream(self.open, self.events, self.close, send_timeout=send_timeout)


def scope(method: str = "GET") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": "/subscribe"}


@pytest.mark.anyio
async def test_head_answers_headers_and_never_opens_a_subscription() -> None:
    recorder, client = Recorder(), Client()
    await recorder.stream()(scope("HEAD"), client.receive, client.send)
    assert client.sent[0]["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in client.sent[0]["headers"]
    assert client.ended and client.body() == b""
    assert recorder.inbox is None and not recorder.closed


@pytest.mark.anyio
async def test_retry_first_then_events_then_a_shutdown_ends_the_response_cleanly() -> None:
    recorder, client = Recorder(), Client()
    task = asyncio.create_task(recorder.stream()(scope(), client.receive, client.send))
    await until(lambda: b"event: ready" in client.body(), 2.0, "the ready event", client.body)
    assert recorder.inbox is not None
    recorder.inbox.put(Event("message", {"seq": 1}, id="d-1:1"))
    recorder.inbox.close("shutdown", Event("shutdown", {"reason": "bye"}))
    await asyncio.wait_for(task, 2)
    body = client.body().decode()
    assert body.startswith("retry: 3000\n\n")
    assert 'id: d-1:1\nevent: message\ndata: {"seq":1}\n\n' in body
    assert body.endswith('event: shutdown\ndata: {"reason":"bye"}\n\n')
    assert client.ended
    assert recorder.closed == [recorder.inbox]


@pytest.mark.anyio
async def test_pings_while_idle() -> None:
    recorder, client = Recorder(ping=0.02), Client()
    task = asyncio.create_task(recorder.stream()(scope(), client.receive, client.send))
    await until(lambda: client.body().count(b": ping\n\n") >= 3, 2.0, "3 pings", client.body)
    client.gone.set()
    await asyncio.wait_for(task, 2)
    assert PING.name == "ping" and b"event: ping" not in client.body()


@pytest.mark.anyio
async def test_a_disconnect_ends_the_stream_and_closes_the_inbox_once() -> None:
    recorder, client = Recorder(), Client()
    task = asyncio.create_task(recorder.stream()(scope(), client.receive, client.send))
    await until(lambda: b"event: ready" in client.body(), 2.0, "the ready event", client.body)
    client.gone.set()
    await asyncio.wait_for(task, 0.5)
    assert recorder.inbox is not None and recorder.inbox.closed == "client"
    assert recorder.closed == [recorder.inbox]


@pytest.mark.anyio
async def test_a_reader_that_stops_reading_is_dropped_after_the_send_timeout() -> None:
    recorder, client = Recorder(), Client(stuck_after=3)  # start, retry, ready; then stuck
    task = asyncio.create_task(
        recorder.stream(send_timeout=0.05)(scope(), client.receive, client.send)
    )
    await until(
        lambda: recorder.inbox is not None and len(client.sent) == 3,
        2.0,
        "the subscription and 3 messages sent",
        lambda: (recorder.inbox, client.sent),
    )
    assert recorder.inbox is not None
    recorder.inbox.put(Event("message", {"seq": 1}))
    await asyncio.wait_for(task, 2)  # returns: no exception escapes to the server
    assert recorder.closed == [recorder.inbox]
