"""Presence and grace: who is connected, and when a user's last connection is gone.

A user may hold several subscriptions. When the last one closes, a grace timer
(``ARCHIVER_DISCONNECT_GRACE``) calls ``on_gone(user)`` (which archives the dialog with
reason ``disconnect``) unless the user reconnects first, so a page reload does not split
a dialog. The timers run in the task group the app's lifespan owns; this class owns the
map of pending timers, the hub owns the connections.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

from .events import REPLACED_EVENT
from .hub import Hub, Inbox
from .logs import log

Sleep = Callable[[float], Awaitable[None]]


class Presence:
    def __init__(
        self,
        hub: Hub,
        grace: float,
        on_gone: Callable[[str], Awaitable[object]],
        on_connect: Callable[[str], None] = lambda user: None,
        sleep: Sleep = anyio.sleep,  # injectable: tests drive the grace without waiting
        max_per_user: int = 0,
    ) -> None:
        self.hub = hub
        self.max_per_user = max_per_user
        self.grace = grace
        self.on_gone = on_gone
        self.on_connect = on_connect
        self.sleep = sleep
        self.draining = False
        self.timers: dict[str, anyio.CancelScope] = {}
        self._tg: TaskGroup | None = None

    def start(self, task_group: TaskGroup) -> None:
        self._tg = task_group

    def connect(self, user: str) -> Inbox:
        scope = self.timers.pop(user, None)
        if scope is not None:
            scope.cancel()
            log.info("session.resumed", user=user)
        self.on_connect(user)
        inbox = self.hub.subscribe(user)
        if self.max_per_user and self.hub.open_count(user) > self.max_per_user:
            self._replace_oldest(user)
        return inbox

    # Divergence #12: past the cap the oldest stream ends; the new one is not refused.
    def _replace_oldest(self, user: str) -> None:
        """Past the per-user cap the oldest stream ends, not the new one: the newest tab is
        the one the person looks at, and a forgotten tab must not lock them out."""
        oldest = self.hub.oldest_open(user)
        if oldest is not None:
            oldest.close("replaced", REPLACED_EVENT)
            log.info("sse.replaced", user=user, conn=oldest.id)

    def disconnect(self, inbox: Inbox) -> int:
        """Forget a connection; start the grace timer if it was the user's last one."""
        remaining = self.hub.unsubscribe(inbox)
        if remaining == 0 and not self.draining and inbox.user not in self.timers:
            self._start_grace(inbox.user)
        return remaining

    def begin_shutdown(self) -> None:
        """No more grace timers: a shutdown archives every dialog itself."""
        self.draining = True
        for scope in self.timers.values():
            scope.cancel()

    def _start_grace(self, user: str) -> None:
        if self._tg is None:
            return
        scope = anyio.CancelScope()
        self.timers[user] = scope
        self._tg.start_soon(self._grace_timer, user, scope)

    async def _grace_timer(self, user: str, scope: anyio.CancelScope) -> None:
        with scope:
            await self.sleep(self.grace)
        if self.timers.get(user) is scope:
            del self.timers[user]
        if scope.cancel_called or self.hub.count(user) or self.draining:
            return
        await self.on_gone(user)
