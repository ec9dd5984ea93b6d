"""In-process fan-out: one inbox per connection, ``publish(user, event)`` to all of a user's.

Like broadcaster's memory backend, but publishing never waits: an inbox is a deque plus
an ``asyncio.Event`` (lighter than an ``asyncio.Queue`` per connection), and a reader
that falls ``MAX_PENDING`` events behind is closed with reason ``overflow`` instead of
slowing the publisher or growing without bound. Closing an inbox makes its reader stop
after the final event (``shutdown``, say) it was closed with.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_PENDING = 1000


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: dict[str, Any]
    id: str | None = None


@dataclass(eq=False, slots=True)
class Inbox:
    """One connection's pending events."""

    user: str
    id: str = field(default_factory=lambda: "c-" + secrets.token_hex(4))
    pending: deque[Event] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    closed: str | None = None  # why the hub closed it: "shutdown", "overflow", ...

    def put(self, event: Event) -> bool:
        if self.closed is not None:
            return False
        if len(self.pending) >= MAX_PENDING:
            self.close("overflow")
            return False
        self.pending.append(event)
        self.wakeup.set()
        return True

    def close(self, reason: str, final: Event | None = None) -> None:
        if self.closed is None:
            if final is not None:
                self.pending.append(final)
            self.closed = reason
            self.wakeup.set()

    async def get(self) -> Event | None:
        """The next event; None once closed and drained."""
        while not self.pending:
            if self.closed is not None:
                return None
            self.wakeup.clear()
            await self.wakeup.wait()
        return self.pending.popleft()


class Hub:
    def __init__(self) -> None:
        self._inboxes: dict[str, set[Inbox]] = {}

    def subscribe(self, user: str) -> Inbox:
        inbox = Inbox(user=user)
        self._inboxes.setdefault(user, set()).add(inbox)
        return inbox

    def unsubscribe(self, inbox: Inbox) -> int:
        """Forget ``inbox``; return how many connections its user still has."""
        inboxes = self._inboxes.get(inbox.user)
        if inboxes is None:
            return 0
        inboxes.discard(inbox)
        if not inboxes:
            del self._inboxes[inbox.user]
            return 0
        return len(inboxes)

    def publish(self, user: str, event: Event) -> int:
        """Give ``event`` to every connection of ``user``; return how many took it."""
        return sum(inbox.put(event) for inbox in list(self._inboxes.get(user, ())))

    def close_all(self, reason: str, final: Event | None = None) -> int:
        count = 0
        for inbox in self.all():
            inbox.close(reason, final)
            count += 1
        return count

    def close_user(self, user: str, reason: str) -> int:
        inboxes = list(self._inboxes.get(user, ()))
        for inbox in inboxes:
            inbox.close(reason)
        return len(inboxes)

    def count(self, user: str) -> int:
        return len(self._inboxes.get(user, ()))

    def users(self) -> list[str]:
        return list(self._inboxes)

    def all(self) -> Iterator[Inbox]:
        for inboxes in list(self._inboxes.values()):
            yield from list(inboxes)

    @property
    def connections(self) -> int:
        return sum(len(v) for v in self._inboxes.values())
