"""The admin feed: one event per archive as it lands, also archives other processes write.

A watchfiles watcher on ``<data>/users`` runs only while at least one admin listens (a
recursive inotify watch costs one watch per directory), in the task group the lifespan
owns, and stops when the last listener leaves or the server shuts down.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.to_thread
import watchfiles
from anyio.abc import TaskGroup

from . import archives
from .hub import Event, Inbox
from .journal import Journal
from .logs import log

FEED = "(admin feed)"


class Feed:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.listeners: set[Inbox] = set()
        self._tg: TaskGroup | None = None
        self._stop: anyio.Event | None = None
        self._watching = anyio.Event()

    def start(self, task_group: TaskGroup) -> None:
        self._tg = task_group

    def subscribe(self, only_user: str | None = None) -> Inbox:
        inbox = Inbox(user=only_user or FEED)
        self.listeners.add(inbox)
        if self._stop is None and self._tg is not None:
            self._stop = anyio.Event()
            self._watching = anyio.Event()
            self._tg.start_soon(self._watch, self._stop, self._watching)
        return inbox

    async def watching(self) -> bool:
        """Wait (up to 5 s) until the watcher is in place: archives after this are seen."""
        with anyio.move_on_after(5.0):
            await self._watching.wait()
        return self._watching.is_set()

    def unsubscribe(self, inbox: Inbox) -> None:
        self.listeners.discard(inbox)
        if not self.listeners and self._stop is not None:
            self._stop.set()
            self._stop = None

    def close_all(self, reason: str, final: Event | None = None) -> None:
        for inbox in list(self.listeners):
            inbox.close(reason, final)

    async def _watch(self, stop: anyio.Event, watching: anyio.Event) -> None:
        layout = self.journal.layout
        users_dir = layout.users_dir
        await anyio.to_thread.run_sync(lambda: users_dir.mkdir(parents=True, exist_ok=True))
        log.info("feed.start", path=users_dir)

        def added(change: watchfiles.Change, _path: str) -> bool:
            return change == watchfiles.Change.added

        # yield_on_timeout: the first (empty) batch tells us the watch is in place.
        async for batch in watchfiles.awatch(
            users_dir,
            watch_filter=added,
            stop_event=stop,
            debounce=100,
            step=20,
            rust_timeout=200,
            yield_on_timeout=True,
        ):
            watching.set()
            paths = archives.new_archives(layout, batch, None)
            for path in sorted(paths):
                self._publish(await anyio.to_thread.run_sync(self._event, path))
        log.info("feed.stop")

    def _event(self, path: Path) -> Event | None:
        user = self.journal.layout.archive_of(path) or ""
        try:
            info = archives.archive_info(user, path)
        except OSError:
            return None  # pruned or forgotten before we read it
        return Event("archive", {"user": user, **info.as_json()})

    def _publish(self, event: Event | None) -> None:
        if event is None:
            return
        for inbox in list(self.listeners):
            if inbox.user in (FEED, event.data["user"]):
                inbox.put(event)
