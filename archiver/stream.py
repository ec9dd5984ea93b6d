"""The ASGI response behind ``/subscribe`` and ``/admin/feed``: one inbox as an SSE stream.

It replaces sse-starlette's ``EventSourceResponse``, which runs a task group of four
tasks per response (the stream, a ping loop, a shutdown-signal listener, a disconnect
listener) and cost ~37 KB per idle stream more than a bare ASGI app. Here the stream
runs in the request's own task, and one small task waits for ``http.disconnect``:

* **Pings** are a timeout on the inbox wait (:meth:`Inbox.get` with ``ping``), not a task
  that sleeps. A ``: ping`` comment goes out every ``ping`` seconds the stream is idle.
* **Disconnects**: the listener closes the inbox, which wakes the stream loop at once;
  the stream ends and ``close`` runs (presence, grace timer) within a loop turn.
* **Shutdown** needs no per-stream signal watcher: ``Sessions.begin_shutdown`` closes
  every inbox with a final ``shutdown`` event, so each stream sends it and then ends its
  response normally (``more_body: False``); nothing is cancelled.
* **A reader that stopped reading**: a write blocked for ``send_timeout`` ends the stream,
  logged as ``sse.send_timeout``, without a traceback.
* **HEAD** gets the headers and an empty body and never opens a subscription
  (sse-starlette's #218: an endless body on HEAD would wedge the connection).

Events are encoded by :func:`archiver.events.encode`, once for all of a user's streams,
into the bytes sse-starlette's ``ServerSentEvent`` writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable

from sse_starlette import ServerSentEvent
from starlette.types import Message, Receive, Scope, Send

from .events import encode as encode_event
from .hub import PING, Event, Inbox
from .logs import log

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer this response
]
RETRY = ServerSentEvent(retry=3000, sep="\n").encode()  # browsers reconnect after 3 s
PING_BYTES = ServerSentEvent(comment="ping", sep="\n").encode()
_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}


class SendTimeout(Exception):
    """A write to the client blocked for longer than the send timeout."""


def encode(event: Event) -> bytes:
    if event is PING:
        return PING_BYTES
    return encode_event(event)


# Divergence #1: one task per stream instead of sse-starlette's EventSourceResponse
# (four tasks each); see ARCHITECTURE.md before "fixing" it.
class EventStream:
    """``open`` makes the inbox, ``events`` turns it into bursts of events, each sent as
    one chunk, and ``close`` forgets it.

    ``open`` and ``close`` run exactly once each for a GET, in the request's task, and
    never for a HEAD.
    """

    __slots__ = ("_close", "_events", "_open", "_send_timeout", "headers")

    def __init__(
        self,
        open: Callable[[], Inbox],
        events: Callable[[Inbox], AsyncGenerator[list[Event], None]],
        close: Callable[[Inbox], None],
        *,
        send_timeout: float,
    ) -> None:
        self._open = open
        self._events = events
        self._close = close
        self._send_timeout = send_timeout
        self.headers = HEADERS  # the response's; a route may add its own after them

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":
            await send(_start(self.headers))
            await send(_END)
            return
        inbox = self._open()
        listener = asyncio.get_running_loop().create_task(_until_disconnect(receive, inbox))
        # The stream is written out here, not in a coroutine of its own: this frame lives
        # as long as the stream, and one suspended coroutine less is ~0.2 KB per stream.
        try:
            await self._send(send, _start(self.headers))
            await self._send(send, _body(RETRY))
            async with contextlib.aclosing(self._events(inbox)) as bursts:
                async for events in bursts:
                    # One write per burst: a reply's words published in one go cost one
                    # write (a syscall that on loopback also runs the receiver's TCP work).
                    await self._send(send, _body(b"".join(map(encode, events))))
            await self._send(send, _END)
        except SendTimeout:
            inbox.close("send_timeout")  # so sse.disconnect says why, not "client"
            log.info("sse.send_timeout", path=scope.get("path"), user=inbox.user, conn=inbox.id)
        finally:
            listener.cancel()
            self._close(inbox)
            await asyncio.wait((listener,))  # owned: never outlives the response

    async def _send(self, send: Send, message: Message) -> None:
        try:
            async with asyncio.timeout(self._send_timeout):
                await send(message)
        except TimeoutError:
            raise SendTimeout() from None


def _start(headers: list[tuple[bytes, bytes]]) -> Message:
    return {"type": "http.response.start", "status": 200, "headers": headers}


def _body(chunk: bytes) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": True}


async def _until_disconnect(receive: Receive, inbox: Inbox) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    inbox.close("client")
