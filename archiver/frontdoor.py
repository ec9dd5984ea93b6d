"""The front door: what is decided about a stream or a chat before anything else runs.

A flood from one address must not slow everyone else down while it lasts, not only once
the caps hold. Two things, which :class:`archiver.direct.Direct` (the two routes' plain
ASGI front, outside Starlette's middleware) asks before authentication:

* **Cheap refusal.** A ``GET /subscribe`` or ``POST /chat`` over its address's limits
  (or the process's) is refused from :meth:`Admission.refuse_early` before its token is
  verified (pyjwt, for a token never seen), with the same JSON, status, security headers
  and ``Retry-After`` as everywhere and no log line (one ``limit.exceeded`` per episode,
  as ever). It takes nothing from the rate:
  a request let through is judged again, for good, by the route (``httpkit.admit``),
  since another may have taken the last place meanwhile. An address over its limits
  with a bad token is therefore told 429, not 401.
* **Fairness by source** (:class:`Handshakes`). At most ``per_source`` stream handshakes
  of one address are in flight at once, from the request until its response is ready;
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
import time
from collections import deque
from dataclasses import dataclass, field

from starlette.types import Scope

from .admission import Admission
from .httpkit import ApiError

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


class FrontDoor:
    """Cheap refusal of streams and chats over their limits, and the handshake gate for
    streams; :class:`archiver.direct.Direct` asks it before authentication."""

    def __init__(self, admission: Admission, handshakes_per_ip: int) -> None:
        self.admission = admission
        self.handshakes = Handshakes(handshakes_per_ip) if handshakes_per_ip > 0 else None

    def refuse(self, scope: Scope) -> ApiError | None:
        """The error for a stream or a chat over its limits now (None: let it in)."""
        stream = scope["path"] == STREAM_PATH
        if not stream and not (scope["path"] == CHAT_PATH and scope["method"] == "POST"):
            return None
        refusal = self.admission.refuse_early(_source(scope), time.monotonic(), stream=stream)
        if refusal is None:
            return None
        return ApiError(refusal.status, refusal.code, refusal.detail, refusal.headers)

    async def enter(self, scope: Scope) -> str | None:
        """Wait for a stream handshake's place; the source to :meth:`leave` (None: no gate).

        The place is held until the response is ready to go out, not while it streams:
        a wrapper around the stream would be a frame held for the stream's whole life."""
        source = _source(scope)
        if self.handshakes is None or source is None or scope["path"] != STREAM_PATH:
            return None
        await self.handshakes.enter(source)
        return source

    def leave(self, source: str | None) -> None:
        if source is not None and self.handshakes is not None:
            self.handshakes.leave(source)


def _source(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None
