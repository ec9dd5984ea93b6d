"""Presence and grace: who is connected, and when a user's last connection is gone.

A user may hold several subscriptions. When the last one closes, a grace timer
(``ARCHIVER_DISCONNECT_GRACE``) calls ``on_gone(user)`` (which archives the dialog with
reason ``disconnect``) unless the user reconnects first, so a page reload does not split
a dialog. This class owns the map of pending timers, the hub owns the connections.

A grace timer is a timer handle on the event loop (``loop.call_later``), not a task: a
task per disconnect, started in the lifespan's task group, cost ~19% of the loop's work
per disconnect in a burst of 200 with 10,000 streams held (anyio's ``start_soon`` alone
12%, then its cancel scope and sleep), for a timer that a reconnect usually cancels.
Only a timer that fires starts a task, a plain asyncio one, for ``on_gone``. Those tasks
belong to the lifespan all the same: one task in its task group cancels them (and waits
for them) when the group is cancelled, and re-raises there what one of them raised, as
if they were the group's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from .events import REPLACED_EVENT
from .hub import Hub, Inbox
from .logs import log


class Timer(Protocol):
    def cancel(self) -> None: ...


# ``call_later(seconds, callback)``: the loop's by default; tests pass a clock of their own
# that fires the callbacks when the test moves time on, so they never wait for a grace.
CallLater = Callable[[float, Callable[[], None]], Timer]


class Presence:
    def __init__(
        self,
        hub: Hub,
        grace: float,
        on_gone: Callable[[str], Awaitable[object]],
        on_connect: Callable[[str], None] = lambda user: None,
        call_later: CallLater | None = None,  # None: the running loop's
        max_per_user: int = 0,
    ) -> None:
        self.hub = hub
        self.max_per_user = max_per_user
        self.grace = grace
        self.on_gone = on_gone
        self.on_connect = on_connect
        self.call_later = call_later
        self.draining = False
        self.timers: dict[str, Timer] = {}
        self._started = False
        self._gone: set[asyncio.Task[None]] = set()  # on_gone calls of timers that fired
        self._failed: asyncio.Future[None] | None = None

    def start(self, task_group: TaskGroup) -> None:
        self._started = True
        self._failed = asyncio.get_running_loop().create_future()
        task_group.start_soon(self._owned)

    def connect(self, user: str) -> Inbox:
        timer = self.timers.pop(user, None)
        if timer is not None:
            timer.cancel()
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
        self._stop_timers()

    def _stop_timers(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()

    def _start_grace(self, user: str) -> None:
        if not self._started:
            return
        call_later = self.call_later or asyncio.get_running_loop().call_later

        def expired() -> None:
            self._expired(user, timer)  # the handle, bound once call_later has returned

        timer = call_later(self.grace, expired)
        self.timers[user] = timer

    def _expired(self, user: str, timer: Timer) -> None:
        """The grace ran out (on the loop): on_gone, in a task of its own, unless the user
        is back or the server is shutting down."""
        if self.timers.get(user) is not timer or not self._started:
            return  # cancelled (a clock may still call it), or the lifespan is over
        del self.timers[user]
        if self.hub.count(user) or self.draining:
            return
        task = asyncio.get_running_loop().create_task(self._call_on_gone(user))
        self._gone.add(task)
        task.add_done_callback(self._ended)

    async def _call_on_gone(self, user: str) -> None:
        await self.on_gone(user)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._gone.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None and self._failed is not None and not self._failed.done():
            self._failed.set_exception(error)

    async def _owned(self) -> None:
        """Runs as long as the lifespan's task group: raises what an on_gone raised, and
        on the group's cancel cancels the timers and the on_gone calls and waits for them."""
        assert self._failed is not None
        try:
            await self._failed
        finally:
            self._started = False
            self._stop_timers()
            running = list(self._gone)
            for task in running:
                task.cancel()
            if running:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(running)
