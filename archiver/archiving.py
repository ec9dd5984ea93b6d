"""Archiving: *when* a dialog ends (journal.py decides *how*), and the work that keeps
ending them: recovery at start-up, the sweeper, retention, the owner check, the fsync tick.

* The sweeper archives, with reason ``timeout``, every dialog whose journal has not been
  written for ``ARCHIVER_SESSION_TIMEOUT`` (:func:`archives.idle_dialogs`, the question
  ``archiver sweep`` asks too), judging by the file, so it also ends dialogs left by a
  crashed process. A dialog another live instance appended to last is left to that
  instance's sweeper, which knows whether a reply is still streaming into it.
* At start-up the same scan archives, with reason ``recovery``, the dialogs whose owning
  process is gone (owners.py), after repairing what a crash left.
* A shutdown archives every dialog this process served (:attr:`Archiver.served`, the
  one map this class owns) in the journal's two passes (:meth:`Archiver.archive_all`).
* Disconnects ready at the same moment share their fsyncs (:class:`GroupCommit`): the
  same two passes for the group, while one group is being committed the next gathers.

Every background task runs in the task group that the app's lifespan owns and cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from . import archive_writes as archives  # the sweep's question, and prune
from .broker import Broker
from .commit import Archived
from .config import Settings
from .dialogfile import Summary
from .errors import JournalError
from .events import archived_event
from .hub import Hub
from .incidents import Incidents
from .indexer import Indexer
from .journal import Journal, NotOwner
from .logs import log
from .metrics import Metrics
from .owners import Instance
from .repair import Damaged, Repaired
from .threads import JournalThreads

T = TypeVar("T")
_Outcome = Summary | Archived | NotOwner | JournalError | None
BATCH = 1000  # users per worker-thread call when archiving many at once
IN_FLIGHT = 3  # such calls at once: the loop handles one's outcomes while others run
GROUP_AT = 8  # archives in flight past which disconnects share their fsyncs (GroupCommit)
GROUPS_AT_ONCE = 2  # GroupCommit's groups committing side by side
GATHER_FOR = 0.005  # seconds a group gathers at most while disconnects still come


class Archiver:
    def __init__(
        self,
        settings: Settings,
        threads: JournalThreads,
        hub: Hub,
        metrics: Metrics,
        incidents: Incidents,
        instance: Instance | None = None,
        chatting: Callable[[str], bool] = lambda user: False,
        index: Indexer | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.settings = settings
        self.threads = threads
        self.hub = hub
        self.broker = broker if broker is not None else Broker(hub, instance)
        self.metrics = metrics
        self.incidents = incidents
        self.instance = instance
        self.chatting = chatting
        self.index = index  # told of every archive that lands or is pruned here
        # Users whose dialogs this process has served: what a shutdown archives.
        self.served: set[str] = set()
        self.group = GroupCommit(threads)

    def serve(self, user: str) -> None:
        self.served.add(user)

    async def start(self, task_group: TaskGroup) -> None:
        """Recover, then start the sweeper and the tickers in ``task_group``."""
        self.threads.journal.observer = self._observed
        await self.recover()
        task_group.start_soon(self._sweeper)
        if self.instance is not None and not self.broker.shared:
            # Only without a shared broker: streams and chats then meet only by routing.
            task_group.start_soon(self._follow_owners)
        if self.settings.fsync == "everysec":
            task_group.start_soon(self._fsync_ticker)

    # -- one dialog ---------------------------------------------------------------------

    async def archive(
        self,
        user: str,
        reason: str,
        idle_for: float | None = None,
        owned: bool = False,
        raise_errors: bool = False,
    ) -> Archived | None:
        """Archive the user's current dialog (waits for a chat in flight to finish).

        ``owned``: only if no other live instance has taken the dialog over (a user whose
        browser moved to another instance goes on there; that one archives it).
        A :class:`JournalError` is logged (once per incident) and, with ``raise_errors``,
        raised; otherwise the journal stays for a later try.
        """
        started = time.monotonic()
        async with self.threads.user_lock(user):
            # Waits while a reply streams into this dialog on another instance.
            await self.broker.acquire(user, "archive")
            try:
                if reason == "disconnect" and idle_for is None:
                    result = await self.group.archive(user, reason, owned)
                else:
                    result = await self._archive_one(user, reason, idle_for, owned)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.broker.release(user)
        if isinstance(result, (NotOwner, JournalError)):
            self._outcome(user, reason, result, 0.0, [])
            if raise_errors and isinstance(result, JournalError):
                raise result
            return None
        if not isinstance(result, Archived):
            return None
        ms = (time.monotonic() - started) * 1000
        self.metrics.archive_seconds.observe(ms / 1000)
        self._outcome(user, reason, result, ms, [])
        return result

    async def _archive_one(
        self, user: str, reason: str, idle_for: float | None, owned: bool
    ) -> _Outcome:
        try:
            return await self.threads.archive(user, reason, idle_for=idle_for, owned=owned)
        except (NotOwner, JournalError) as exc:
            return exc

    def _outcome(
        self, user: str, reason: str, outcome: _Outcome, ms: float, results: list[Archived]
    ) -> None:
        """Log, count and announce what archiving one dialog came to."""
        if isinstance(outcome, NotOwner):
            log.info("archive.skipped", user=user, reason=reason, owner=outcome.owner)
        elif isinstance(outcome, JournalError):
            # journal.error once per incident (incidents.py), each failure at DEBUG.
            self.incidents.failed(user, "archive", outcome)
            log.debug(
                "archive.failed",
                user=user,
                reason=reason,
                error=outcome.kind,
                detail=outcome.detail,
            )
        elif isinstance(outcome, Archived):
            self.incidents.succeeded(user)
            self._note_archived(outcome, ms)
            results.append(outcome)

    def _note_archived(self, result: Archived, ms: float) -> None:
        """Count, log and announce an archive."""
        if not self.hub.count(result.user) and not self.chatting(result.user):
            # Nothing of theirs is left here for a shutdown to archive: forget them, so
            # the set does not grow with every user a long-running process ever served.
            self.served.discard(result.user)
        self.metrics.archived.labels(result.reason).inc()
        log.info(
            "dialog.archived",
            user=result.user,
            dialog=result.dialog,
            reason=result.reason,
            messages=result.messages,
            file=result.path,
            ms=round(ms, 1),
        )
        self.broker.publish(result.user, archived_event(result.dialog, result.name, result.reason))
        if self.index is not None and result.reason != "shutdown":
            # A shutdown's archives are left to the next catch-up (every start, sweep and
            # `archiver search` syncs first): indexing 10,000 of them in the drain took the
            # GIL from the renames and held the exit 1.6 s after the last one.
            self.index.submit(result.path)

    # -- many dialogs -------------------------------------------------------------------

    async def archive_all(
        self, users: list[str], reason: str, results: list[Archived], owned: bool = True
    ) -> None:
        """Archive many dialogs in the journal's two passes, a batch per thread call.

        One archive() per user, 16 at a time, took 5.9 s for 10,000 dialogs at shutdown:
        three fsyncs each queueing behind each other's journal commits, and worker threads
        fighting over the GIL. In two passes (trailers, one syncfs, renames, one syncfs:
        see Journal.write_trailer) and in batches of users per worker-thread call, the
        same 10,000 take 1.7 s. Each batch holds its users' locks, so a reply still being
        journaled goes first, as with archive(). IN_FLIGHT batches go at once: one after
        another, each batch's outcomes (log lines, events) were handled on the loop while
        no thread worked, and each thread's renames while the loop waited.
        """
        journal = self.threads.journal
        trailed: list[tuple[str, Summary]] = []

        def trail_batch(batch: list[str]) -> list[tuple[str, _Outcome]]:
            return [(u, _attempt(journal.write_trailer, u, reason, owned=owned)) for u in batch]

        def move_batch(batch: list[tuple[str, Summary]]) -> list[tuple[str, _Outcome]]:
            return [(u, _attempt(journal.move_to_archive, u, summary)) for u, summary in batch]

        def trail_done(outcomes: list[tuple[str, _Outcome]], ms: float) -> None:
            for user, outcome in outcomes:
                if isinstance(outcome, Summary):
                    trailed.append((user, outcome))
                else:
                    self._outcome(user, reason, outcome, ms, results)

        def move_done(outcomes: list[tuple[str, _Outcome]], ms: float) -> None:
            for user, outcome in outcomes:
                self._outcome(user, reason, outcome, ms, results)  # ms: its share of the batch

        await self._batches_run([(b, b) for b in _batches(users)], trail_batch, trail_done)
        await self.threads.run(journal.sync_filesystem)
        trailed.sort(key=lambda pair: pair[0])  # batches finish in any order
        moves = [([u for u, _ in pairs], pairs) for pairs in _batches(trailed)]
        await self._batches_run(moves, move_batch, move_done)
        await self.threads.run(journal.sync_filesystem)

    async def _batches_run(
        self,
        batches: list[tuple[list[str], T]],
        func: Callable[[T], list[tuple[str, _Outcome]]],
        done: Callable[[list[tuple[str, _Outcome]], float], None],
    ) -> None:
        """``func(arg)`` for each ``(users, arg)`` in a worker thread under its users'
        locks, IN_FLIGHT at once; ``done(outcomes, ms per user)`` on the loop as each ends.

        A shutdown starts this while 10,000 streams are ending, each a few callbacks in
        the loop's queue: every await here waits behind all of them. So nothing is awaited
        between batches but their ends: the next batch's locks are free (fast_acquire:
        no loop turn) and it goes to a thread at once. A cancel (the shutdown's budget)
        starts no more batches and waits for those in flight, as threads.run does.
        """
        waiting = list(reversed(batches))
        running: dict[asyncio.Future[list[tuple[str, _Outcome]]], _Batch] = {}

        def finish(future: asyncio.Future[list[tuple[str, _Outcome]]], batch: _Batch) -> None:
            # result() raises what the thread raised, as threads.run would
            done(future.result(), (time.monotonic() - batch.started) * 1000 / batch.users)

        try:
            while waiting or running:
                while waiting and len(running) < IN_FLIGHT:
                    users, arg = waiting.pop()
                    batch = _Batch(contextlib.AsyncExitStack(), max(1, len(users)))
                    try:
                        for user in users:
                            await batch.locks.enter_async_context(self.threads.user_lock(user))
                    except BaseException:
                        with anyio.CancelScope(shield=True):
                            await batch.locks.aclose()
                        raise
                    batch.started = time.monotonic()
                    running[self.threads.submit(func, arg)] = batch
                ended, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in ended:
                    batch = running.pop(future)
                    await batch.locks.aclose()
                    finish(future, batch)
        finally:
            with anyio.CancelScope(shield=True):
                if running:
                    await asyncio.wait(running)
                for batch in running.values():
                    await batch.locks.aclose()
            for future, batch in running.items():
                finish(future, batch)

    # -- recovery, sweep, retention -----------------------------------------------------

    async def recover(self) -> None:
        """At start-up: repair torn journals, archive orphaned dialogs (reason recovery)."""
        started = time.monotonic()
        journal = self.threads.journal
        users = [
            u for u, _ in await self.threads.run(lambda: list(archives.current_mtimes(journal)))
        ]
        archived = 0
        for user in users:
            try:
                await self.threads.finish_crashed(user)
            except JournalError as exc:
                # One user's unwritable journal must not keep the others from recovery.
                self.incidents.failed(user, "repair", exc)
                continue
            if self.instance is not None:
                owner = await self.threads.run(journal.owner, user)
                if owner and owner != self.instance.id:
                    if await self.threads.run(self.broker.alive, owner):
                        continue  # a live instance's dialog, not an orphan
                    if await self.broker.gone_everywhere(user) is not True:
                        continue  # its user reconnected elsewhere: the dialog goes on
            if await self.archive(user, "recovery") is not None:
                archived += 1
        log.info(
            "recovery.run",
            dialogs=len(users),
            archived=archived,
            ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def recover_instance(self, dead: str) -> None:
        """Archive, with reason ``recovery``, the dialogs of an instance found dead
        (the broker tells exactly one survivor), except those whose user is connected
        somewhere: they go on in the same dialog wherever the user is now."""
        started = time.monotonic()
        journal = self.threads.journal
        mtimes = await self.threads.run(lambda: list(archives.current_mtimes(journal)))
        archived = kept = 0
        for user, _ in mtimes:
            if await self.threads.run(journal.owner, user) != dead:
                continue
            if await self.broker.gone_everywhere(user) is not True:
                kept += 1
            elif await self.archive(user, "recovery", owned=True) is not None:
                archived += 1
        log.warning(
            "instance.dead",
            instance=dead,
            archived=archived,
            kept=kept,
            ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def sweep(self, older_than: float | None = None) -> int:
        """Archive every dialog idle for ``older_than`` seconds (default: the timeout)."""
        limit = self.settings.session_timeout if older_than is None else older_than
        started = time.monotonic()
        journal = self.threads.journal
        mtimes = await self.threads.run(lambda: list(archives.current_mtimes(journal)))
        archived = 0
        for user in archives.idle_dialogs(mtimes, limit):
            if self.chatting(user):
                continue
            # owned: a dialog another live process appended to last is that process's to
            # judge; its reply may be streaming right now (the file looks idle meanwhile).
            if await self.archive(user, "timeout", idle_for=limit, owned=True) is not None:
                archived += 1
        pruned = await self._prune() if self.settings.retention_days else 0
        if self.index is not None:
            self.index.refresh()  # archives other processes wrote or deleted meanwhile
        self.metrics.sweeps.inc()
        log.info(
            "sweep.run",
            dialogs=len(mtimes),
            archived=archived,
            pruned=pruned,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return archived

    async def _prune(self) -> int:
        """Delete archives older than ARCHIVER_RETENTION_DAYS (archives.prune: as the CLI)."""
        journal = self.threads.journal
        days = self.settings.retention_days
        pruned = await self.threads.run(lambda: list(archives.prune(journal, days)))
        for item in pruned:
            log.info(
                "archive.pruned",
                user=item.info.user,
                name=item.info.name,
                ended=item.info.ended,
                days=days,
            )
            if self.index is not None:
                self.index.submit(item.path)
        self.metrics.pruned.inc(len(pruned))
        return len(pruned)

    def _observed(self, what: Archived | Repaired | Damaged) -> None:
        # Runs in a worker thread: logging, prometheus counters and Indexer.submit are
        # thread-safe.
        if isinstance(what, Damaged):
            self.metrics.damaged.inc()
            log.error("journal.damaged", user=what.user, file=what.side_file, reason=what.reason)
        elif isinstance(what, Repaired):
            torn, side = what.torn_bytes, what.side_file
            log.warning("journal.repaired", user=what.user, torn_bytes=torn, side_file=side)
        else:
            fields = {"dialog": what.dialog, "reason": what.reason, "file": what.path}
            log.warning("archive.finished", user=what.user, **fields)
            if self.index is not None:
                self.index.submit(what.path)

    # -- tickers ------------------------------------------------------------------------

    async def _sweeper(self) -> None:
        while True:
            await anyio.sleep(self.settings.sweep_interval)
            try:
                await self.sweep()
            except (OSError, JournalError) as exc:
                log.error("sweep.failed", error=type(exc).__name__, detail=str(exc))

    async def _follow_owners(self) -> None:
        """End streams of users whose dialog another live instance now owns.

        Behind a proxy that routes by token, a user's chats go to one instance; after a
        restart or failover their stream can be left on another, where no reply events
        arrive. Ending it makes the browser reconnect to where its chats go.
        """
        assert self.instance is not None
        instance = self.instance
        journal = self.threads.journal

        def moved(users: list[str]) -> list[tuple[str, str]]:
            owners = [(user, journal.owner(user)) for user in users]
            return [(u, o) for u, o in owners if o is not None and instance.other_live_owner(o)]

        while True:
            await anyio.sleep(self.settings.ping_interval)
            # Alone on the data directory, no dialog can be another live instance's: skip
            # reading every connected user's owner (10,000 held: 75-115 ms of a worker
            # thread holding the GIL every ping interval, which the loop's disconnects and
            # archives then waited behind; docs/performance.md).
            if await self.threads.run(instance.alone):
                continue
            for user, owner in await self.threads.run(moved, self.hub.users()):
                closed = self.hub.close_user(user, "moved")
                log.info("session.moved", user=user, owner=owner, connections=closed)

    async def _fsync_ticker(self) -> None:
        while True:
            await anyio.sleep(1.0)
            try:
                synced = await self.threads.sync_dirty()
            except OSError as exc:
                log.debug("fsync.failed", error=type(exc).__name__, detail=str(exc))
                self.incidents.failed(None, "fsync", JournalError("io", f"fsync failed: {exc}"))
            else:
                if synced:
                    self.incidents.succeeded(None)


class GroupCommit:
    """Disconnects ready at the same moment, archived with their fsyncs shared.

    200 disconnects at once, each archive() with its three fsyncs (the file, both
    directories) in a worker thread, queued on ~600 fsyncs: a p99 of 185-200 ms. Up to
    GROUP_AT archives in flight still go the single way, side by side (Journal.archive:
    its fsyncs flush only its own files, where a syncfs(2) flushes whatever else was
    written to the filesystem, which on a busy machine cost paced disconnects up to
    300 ms). Past that, callers gather and go in one group (group commit): every
    trailer, one syncfs, every rename, one more, as a shutdown does
    (Journal.archive_group); whoever arrives once a group has formed goes in the next,
    which commits beside it (up to GROUPS_AT_ONCE; their users differ, and each takes its
    flocks in user order).
    Each caller holds its own user's lock while it waits, so a chat in flight still
    goes first.
    """

    def __init__(self, threads: JournalThreads) -> None:
        self.threads = threads
        self._alone = 0  # archives in flight the single way
        self._pending: list[tuple[tuple[str, str, bool], asyncio.Future[_Outcome]]] = []
        # Groups committing at once: one at a time, the 30-60 stragglers of a burst of 200
        # waited for the whole first group (its trailers, syncfs, renames, syncfs).
        self._turn = asyncio.Semaphore(GROUPS_AT_ONCE)

    async def archive(self, user: str, reason: str, owned: bool) -> _Outcome:
        """Archive ``user``'s dialog, alone or in the next group (the caller holds the
        user's lock)."""
        if self._alone < GROUP_AT and not self._pending:
            self._alone += 1
            try:
                outcomes = await self.threads.run(
                    commit_group, self.threads.journal, [(user, reason, owned)]
                )
            finally:
                self._alone -= 1
            return outcomes[0]
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append(((user, reason, owned), future))
        with anyio.CancelScope(shield=True):  # as threads.run: a started archive finishes
            if len(self._pending) == 1:
                await self._lead()
            outcome = await future
        return outcome

    async def _lead(self) -> None:
        async with self._turn:
            # Gather while they still come: 200 disconnects at once reach here over a
            # few loop turns, and a group cut at the first would leave most to the next.
            waiting, until = -1, time.monotonic() + GATHER_FOR
            while waiting != len(self._pending) and time.monotonic() < until:
                waiting = len(self._pending)
                await asyncio.sleep(0)
            group, self._pending = self._pending, []
            try:
                outcomes = await self.threads.run(
                    commit_group, self.threads.journal, [r for r, _ in group]
                )
            except BaseException as exc:  # each caller raises it, as from its own archive
                for _, future in group:
                    future.set_exception(exc)
                return
            for (_, future), outcome in zip(group, outcomes, strict=True):
                future.set_result(outcome)


@dataclass
class _Batch:
    """One batch of _batches_run in flight: its users' locks, held until it ends."""

    locks: contextlib.AsyncExitStack
    users: int
    started: float = 0.0


def commit_group(journal: Journal, group: list[tuple[str, str, bool]]) -> list[_Outcome]:
    """Archive each ``(user, reason, owned)``: one alone the single way, more together."""
    if len(group) == 1:
        user, reason, owned = group[0]
        return [_attempt(journal.archive, user, reason, owned=owned)]
    return list(journal.archive_group(group))


def _attempt(func: Callable[..., _Outcome], *args: Any, **kwargs: Any) -> _Outcome:
    """``func(...)``, with the failures a batch reports per user returned, not raised."""
    try:
        return func(*args, **kwargs)
    except (NotOwner, JournalError) as exc:
        return exc


def _batches(items: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]
