"""The facade the app calls: presence, chats, archiving and replay, wired together.

Each part owns its own per-user state: the hub the connections, :class:`Presence` the
grace timers, :class:`Chats` the replies in flight, :class:`Archiver` the users served
(what a shutdown archives), :class:`JournalThreads` the per-user locks. This module holds
none of it; it only decides the order of a start and a shutdown:

* Shutdown: :meth:`Sessions.begin_shutdown` ends every stream with a ``shutdown`` event
  and stops replies (those ends are not disconnects), and starts archiving every dialog
  this process served with reason ``shutdown``; :meth:`Sessions.drain` waits for that.
  Archiving starts at once, not once uvicorn has seen every response end and called the
  lifespan's shutdown: with 10,000 streams that wait was 2-3 s in which no thread wrote.

Every background task (sweeper, tickers, the feed's watcher) runs in the task group that
the app's lifespan owns and cancels; grace timers are loop timers, and the archives they
start are tasks that Presence cancels with that group.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .archiving import Archiver
from .broker import Broker
from .chats import Busy, ChatResult, Chats, Failed, KeyReused, Refused, ShuttingDown, Unanswered
from .commit import Archived
from .config import Settings
from .events import SHUTDOWN_EVENT
from .feed import Feed
from .hub import Event, Hub, Inbox
from .incidents import Incidents
from .indexer import Indexer
from .limits import Breaker, RateLimit
from .logs import log
from .metrics import Metrics
from .owners import Instance
from .presence import Presence
from .replay import Replay, parse_event_id
from .replies import Responder
from .threads import JournalThreads

# How often a shutdown that waits for users to reconnect elsewhere asks whether every
# peer is shutting down too (then nobody will reconnect: stop waiting).
LEAVING_POLL = 0.1

__all__ = [
    "Busy",
    "ChatResult",
    "Failed",
    "KeyReused",
    "Refused",
    "Sessions",
    "ShuttingDown",
    "Unanswered",
    "parse_event_id",
]


@dataclass
class Sessions:
    settings: Settings
    threads: JournalThreads
    hub: Hub
    responder: Responder
    instance: Instance | None = None
    rate_limit: RateLimit | None = None
    breaker: Breaker | None = None
    metrics: Metrics | None = None
    feed: Feed | None = None
    index: Indexer | None = None  # the search index's worker, told of every archive
    broker: Broker | None = None  # None: the memory broker (one process)
    incidents: Incidents = field(default_factory=Incidents)
    started_at: float = field(default_factory=time.time)
    shutdown_started: float | None = None
    # The lifespan's task group (run()), where a shutdown's archiving starts, and the
    # event that says it is done; without run() (tests), drain() archives itself.
    _task_group: TaskGroup | None = field(default=None, repr=False)
    _archived_all: anyio.Event | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        hub = self.hub
        if self.broker is None:
            self.broker = Broker(hub, self.instance)
        broker = self.broker
        if self.metrics is None:
            self.metrics = Metrics(lambda: hub.connections, lambda: len(hub.users()))
        self.chats = Chats(
            self.threads,
            hub,
            self.responder,
            self.metrics,
            self.incidents,
            on_append=self._serve,
            rate_limit=self.rate_limit,
            breaker=self.breaker,
            broker=broker,
        )
        self.archiver = Archiver(
            self.settings,
            self.threads,
            hub,
            self.metrics,
            self.incidents,
            self.instance,
            chatting=self.chats.__contains__,
            index=self.index,
            broker=broker,
        )
        self.presence = Presence(
            hub,
            self.settings.disconnect_grace,
            self._gone,
            on_connect=self._serve,
            max_per_user=self.settings.max_streams_per_user,
        )
        self.replay = Replay(self.threads, broker.listening)

    def _serve(self, user: str) -> None:
        self.archiver.serve(user)

    async def _gone(self, user: str) -> None:
        """The grace ran out with no connection here: archive unless the user is
        connected on another instance, or the broker cannot tell (the sweeper ends
        such a dialog later)."""
        assert self.broker is not None
        gone = await self.broker.gone_everywhere(user)
        if gone is None:
            log.info("presence.unknown", user=user, broker=self.broker.name)
            return
        if not gone:
            log.info("presence.elsewhere", user=user)
            return
        # Without a shared broker, a dialog another live instance appended to last is
        # that instance's (its user's browser moved there); with one, presence decided.
        await self.archiver.archive(user, "disconnect", owned=not self.broker.shared)

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, task_group: TaskGroup) -> None:
        """Start the background work in ``task_group`` (owned by the lifespan)."""
        assert self.broker is not None
        self._task_group = task_group
        await self.broker.start(task_group, self.archiver.recover_instance)
        self.presence.start(task_group)
        if self.feed is not None:
            self.feed.start(task_group)
        await self.archiver.start(task_group)

    @property
    def draining(self) -> bool:
        return self.shutdown_started is not None

    def begin_shutdown(self) -> None:
        """End every stream cooperatively, stop replies and start archiving what this
        process served; sync so a signal can call it."""
        if self.draining:
            return
        self.shutdown_started = time.monotonic()
        log.info(
            "shutdown.begin",
            connections=self.hub.connections,
            users=len(self.archiver.served),
            replies=len(self.chats),
        )
        self.presence.begin_shutdown()
        self.chats.begin_shutdown()
        if self._task_group is not None:
            # Before the streams are woken: its first step then runs before theirs.
            self._archived_all = anyio.Event()
            self._task_group.start_soon(self._archive_served, self._archived_all)
        self.hub.close_all("shutdown", SHUTDOWN_EVENT)
        if self.feed is not None:
            self.feed.close_all("shutdown", SHUTDOWN_EVENT)

    async def drain(self) -> None:
        """Archive every dialog this process served, with reason ``shutdown`` (wait for
        the archiving begin_shutdown started, or do it here)."""
        self.begin_shutdown()
        if self._archived_all is None:
            await self._archive_served(anyio.Event())
        else:
            await self._archived_all.wait()

    async def _archive_served(self, done: anyio.Event) -> None:
        try:
            await self._archive_served_now()
        finally:
            done.set()

    async def _archive_served_now(self) -> None:
        started = time.monotonic()
        # Started at begin_shutdown, maybe before a chat in flight made its first append
        # (which serves its user): those users too. Each chat holds its user's lock from
        # its admission on, so their archive waits for the chat, as before.
        users = await self._not_elsewhere(sorted(self.archiver.served | set(self.chats)))
        results: list[Archived] = []
        # Whatever is left of ARCHIVER_SHUTDOWN_TIMEOUT since SIGTERM (streams and requests
        # in flight had their part of it), but always a moment to write the archives.
        elapsed = time.monotonic() - (self.shutdown_started or started)
        budget = max(1.0, self.settings.shutdown_timeout - elapsed - 0.5)
        assert self.broker is not None
        shared = self.broker.shared
        # With a shared broker, presence decided (above) and the claims order the replies
        # of other instances; without one, a dialog another live instance appended to
        # last is that instance's (owned).
        users = await self.broker.acquire_all(users)
        with anyio.move_on_after(budget) as scope:
            await self.archiver.archive_all(users, "shutdown", results, owned=not shared)
        with anyio.CancelScope(shield=True):
            await self.broker.release_all(users)
        if self.settings.fsync == "everysec":
            await self.threads.sync_dirty()
        log.info(
            "shutdown.done",
            archived=len(results),
            users=len(users),
            timed_out=scope.cancelled_caught,
            ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _not_elsewhere(self, users: list[str]) -> list[str]:
        """The served users a shutdown archives: with a shared broker, not those
        connected on another instance (their dialog goes on there), and none if the
        broker cannot tell (recovery or the sweeper ends them later)."""
        assert self.broker is not None
        if not self.broker.shared or not users:
            return users
        await self.broker.leaving()
        if await self.broker.peers_staying():
            # The browsers this shutdown ended reconnect to the other instances (the
            # widget within 3 s): give them the grace, as a last tab's close does. Not
            # for peers that are shutting down too (`serve --workers` stopping, a whole
            # deployment stopped): nobody reconnects to those, so stop waiting once
            # every peer says it is leaving.
            elapsed = time.monotonic() - (self.shutdown_started or time.monotonic())
            room = self.settings.shutdown_timeout - elapsed - 2.0
            with anyio.move_on_after(max(0.0, min(self.settings.disconnect_grace, room))):
                # Polled: the peers' markers are in Redis, there is no event to wait on.
                while True:
                    if not await self.broker.peers_staying():
                        break
                    await anyio.sleep(LEAVING_POLL)
        elsewhere = await self.broker.present_elsewhere(users)
        if elsewhere is None:
            log.warning("presence.unknown", users=len(users), broker=self.broker.name)
            return []
        for user in sorted(elsewhere):
            log.info("presence.elsewhere", user=user)
        return [u for u in users if u not in elsewhere]

    # -- what the routes call -----------------------------------------------------------

    def connect(self, user: str) -> Inbox:
        assert self.broker is not None
        inbox = self.presence.connect(user)
        self.broker.joined(user)
        return inbox

    def disconnect(self, inbox: Inbox) -> int:
        """Forget a connection; start the grace timer if it was the user's last one."""
        assert self.broker is not None
        remaining = self.presence.disconnect(inbox)
        if not remaining:
            self.broker.left(inbox.user)
        return remaining

    async def chat(self, user: str, text: str, key: str | None = None) -> ChatResult:
        return await self.chats.chat(user, text, key)

    def stop(self, user: str) -> bool:
        return self.chats.stop(user)

    def stream(
        self, inbox: Inbox, last_event_id: str | None, ping: float | None = None
    ) -> AsyncGenerator[list[Event], None]:
        return self.replay.stream(inbox, last_event_id, ping)

    async def archive(
        self, user: str, reason: str, idle_for: float | None = None, raise_errors: bool = False
    ) -> Archived | None:
        return await self.archiver.archive(user, reason, idle_for, raise_errors=raise_errors)

    async def sweep(self, older_than: float | None = None) -> int:
        return await self.archiver.sweep(older_than)

    # -- numbers ------------------------------------------------------------------------

    @property
    def archived(self) -> dict[str, int]:
        """Dialogs archived since start, by reason (the metrics' counter, read back)."""
        assert self.metrics is not None
        return self.metrics.archived_by_reason()

    def health(self) -> dict[str, Any]:
        return {
            "status": "draining" if self.draining else "ok",
            "uptime": round(time.time() - self.started_at, 1),
            "connections": self.hub.connections,
            "users": len(self.hub.users()),
            "replies": len(self.chats),
            "archived": self.archived,
            "instance": self.instance.id if self.instance else None,
            "broker": self.broker.health() if self.broker else None,
        }
