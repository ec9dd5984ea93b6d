"""The front door: what is decided about a stream or a chat before anything else runs.

A flood from one address must not slow everyone else down while it lasts, not only once
the caps hold. Two things, in one ASGI layer that sits before authentication:

* **Cheap refusal.** A ``GET /subscribe`` or ``POST /chat`` over its address's limits
  (or the process's) is answered here, from :meth:`Admission.refuse_early`: before its
  token is verified (pyjwt, for a token never seen), before Starlette's routing and
  exception handling, with the same JSON, status and ``Retry-After`` as everywhere and no
  log line (one ``limit.exceeded`` per episode, as ever). It takes nothing from the rate:
  a request let through is judged again, for good, by the route (``httpkit.admit``),
  since another may have taken the last place meanwhile. An address over its limits
  with a bad token is therefore told 429, not 401.
* **Fairness by source** (:class:`Handshakes`). At most ``per_source`` stream handshakes
  of one address are in flight at once, from the request to the response's first line;
  the rest wait their turn in order, on a future (no CPU, no polling), while other
  addresses go straight through. A flood's twenty connections then put a few requests,
  not twenty, ahead of each step of another user's in the event loop. The stream itself
  holds no place once it has started. Chats are not gated: a reply holds its request for
  seconds, and an office behind one NAT address chats at once; the rate is their bound.

``0`` turns the gate off (``ARCHIVER_HANDSHAKES_PER_IP``). The address is the one
``admission`` counts: behind trusted proxies, the forwarded one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import Admission, Refusal

STREAM_PATH = "/subscribe"
CHAT_PATH = "/chat"


@dataclass
class Handshakes:
    """Places for stream handshakes, ``per_source`` per address, handed on in order."""

    per_source: int
    _busy: dict[str, int] = field(default_factory=dict)
    _waiting: dict[str, deque[asyncio.Future[None]]] = field(default_factory=dict)

    async def enter(self, source: str) -> None:
        """Return once ``source`` has a place; :meth:`leave` gives it back."""
        busy = self._busy.get(source, 0)
        if busy < self.per_source:
            self._busy[source] = busy + 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(source, deque()).append(waiter)
        try:
            await waiter  # the place is handed over by leave(): the count stays
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave(source)  # handed over just as it was cancelled: pass it on
            raise

    def leave(self, source: str) -> None:
        queue = self._waiting.get(source)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the place goes to the next in line, as is
                return
        self._waiting.pop(source, None)
        busy = self._busy.get(source, 0) - 1
        if busy > 0:
            self._busy[source] = busy
        else:
            self._busy.pop(source, None)  # no table of every address ever seen

    def in_flight(self, source: str) -> int:
        return self._busy.get(source, 0)

    def waiting(self, source: str) -> int:
        return sum(1 for w in self._waiting.get(source, ()) if not w.done())


def refusal_messages(refusal: Refusal) -> tuple[Message, Message]:
    """The response to a refusal: httpkit's JSON error shape, without Starlette."""
    body = json.dumps({"error": refusal.code, "detail": refusal.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in refusal.headers.items()),
    ]
    return (
        {"type": "http.response.start", "status": refusal.status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


class FrontDoor:
    """ASGI middleware: cheap refusal of streams and chats over their limits, and the
    handshake gate for streams. Put it before authentication."""

    def __init__(self, app: ASGIApp, admission: Admission, handshakes_per_ip: int) -> None:
        self.app = app
        self.admission = admission
        self.handshakes = Handshakes(handshakes_per_ip) if handshakes_per_ip > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        stream = path == STREAM_PATH
        if not stream and not (path == CHAT_PATH and scope["method"] == "POST"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        source = client[0] if client else None
        refusal = self.admission.refuse_early(source, time.monotonic(), stream=stream)
        if refusal is not None:
            start, body = refusal_messages(refusal)
            await send(start)
            await send(body)
            return
        if not stream or source is None or self.handshakes is None:
            await self.app(scope, receive, send)
            return
        await self._gated(self.handshakes, source, scope, receive, send)

    async def _gated(
        self, gate: Handshakes, source: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        await gate.enter(source)
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                gate.leave(source)

        async def started(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()  # the handshake is over: the stream holds no place
            await send(message)

        try:
            await self.app(scope, receive, started)
        finally:
            release()
