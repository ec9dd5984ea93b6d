"""Presence and the life of a dialog: *when* to archive (journal.py decides *how*).

* A user may hold several subscriptions. When the last one closes, a grace timer
  (``ARCHIVER_DISCONNECT_GRACE``) archives the dialog with reason ``disconnect`` unless
  the user reconnects first, so a page reload does not split a dialog.
* The sweeper archives, with reason ``timeout``, every dialog whose journal has not been
  written for ``ARCHIVER_SESSION_TIMEOUT``, judging by the file, so it also ends dialogs
  left by a crashed process. A dialog another live instance appended to last is left to
  that instance's sweeper, which knows whether a reply is still streaming into it. At
  start-up the same scan archives, with reason ``recovery``, the dialogs whose owning
  process is gone (owners.py).
* Chats of one user run one at a time under the user's lock: the user's message, the
  streamed reply, the assistant's message. Archiving waits for that lock, so a dialog is
  never split between a question and its answer.
* Shutdown: :meth:`begin_shutdown` ends every stream with a ``shutdown`` event and stops
  replies (those ends are not disconnects); :meth:`drain` then archives every dialog this
  process knows with reason ``shutdown``.

Every background task (grace timers, sweeper, fsync ticker) runs in the task group that
the app's lifespan owns and cancels.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from . import review
from .config import Settings
from .feed import Feed
from .hub import Event, Hub, Inbox
from .incidents import Incidents
from .index import Indexer
from .journal import Appended, Archived, Head, JournalError, Message, NotOwner, Repaired
from .limits import Breaker, RateLimit
from .logs import log
from .metrics import Metrics
from .owners import Instance
from .replies import ReplyError, ReplyRequest, Responder
from .store import Store

T = TypeVar("T")


class Busy(Exception):
    """A reply for this user is still streaming."""


class ShuttingDown(Exception):
    """The server is draining; no new chats."""


class Refused(Exception):
    """A chat refused before anything was journaled (rate limit, open breaker)."""

    def __init__(self, status: int, code: str, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


@dataclass
class _Chat:
    scope: anyio.CancelScope | None = None
    stopped: bool = False


@dataclass(frozen=True)
class ChatResult:
    user_message: Appended
    reply: Appended
    interrupted: bool

    def as_json(self) -> dict[str, Any]:
        reply: dict[str, Any] = {"seq": self.reply.message.seq, "text": self.reply.message.text}
        if self.interrupted:
            reply["interrupted"] = True
        return {
            "dialog": self.user_message.dialog,
            "seq": self.user_message.message.seq,
            "reply": reply,
        }


def message_event(dialog: str, message: Message) -> Event:
    data = {"dialog": dialog, **message.as_json()}
    return Event("message", data, id=f"{dialog}:{message.seq}")


def archived_event(archived: Archived) -> Event:
    data = {"dialog": archived.dialog, "archive": archived.name, "reason": archived.reason}
    return Event("archived", data)


SHUTDOWN_EVENT = Event("shutdown", {"reason": "server shutting down"})


@dataclass
class Sessions:
    settings: Settings
    store: Store
    hub: Hub
    responder: Responder
    instance: Instance | None = None
    rate_limit: RateLimit | None = None
    breaker: Breaker | None = None
    metrics: Metrics | None = None
    feed: Feed | None = None
    index: Indexer | None = None  # told of every archive that lands or is pruned here
    draining: bool = False
    shutdown_started: float | None = None
    archived: Counter[str] = field(default_factory=Counter)
    incidents: Incidents = field(default_factory=Incidents)
    started_at: float = field(default_factory=time.time)
    _tg: TaskGroup | None = None
    _grace: dict[str, anyio.CancelScope] = field(default_factory=dict)
    _chats: dict[str, _Chat] = field(default_factory=dict)
    # Users whose dialogs this process has served: what a shutdown archives.
    _known: set[str] = field(default_factory=set)

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, task_group: TaskGroup) -> None:
        """Start the background work in ``task_group`` (owned by the lifespan)."""
        self._tg = task_group
        self.store.journal.observer = self._observed
        if self.feed is not None:
            self.feed.start(task_group)
        await self.recover()
        task_group.start_soon(self._sweeper)
        if self.instance is not None:
            task_group.start_soon(self._follow_owners)
        if self.settings.fsync == "everysec":
            task_group.start_soon(self._fsync_ticker)

    def begin_shutdown(self) -> None:
        """End every stream cooperatively and stop replies; sync so a signal can call it."""
        if self.draining:
            return
        self.draining = True
        self.shutdown_started = time.monotonic()
        log.info(
            "shutdown.begin",
            connections=self.hub.connections,
            users=len(self._known),
            replies=len(self._chats),
        )
        for scope in self._grace.values():
            scope.cancel()
        for chat in self._chats.values():
            chat.stopped = True
            if chat.scope is not None:
                chat.scope.cancel()
        self.hub.close_all("shutdown", SHUTDOWN_EVENT)
        if self.feed is not None:
            self.feed.close_all("shutdown", SHUTDOWN_EVENT)

    async def drain(self) -> None:
        """Archive every dialog this process knows, with reason ``shutdown``."""
        self.begin_shutdown()
        started = time.monotonic()
        users = sorted(self._known)
        results: list[Archived] = []
        # Whatever is left of ARCHIVER_SHUTDOWN_TIMEOUT since SIGTERM (streams and requests
        # in flight had their part of it), but always a moment to write the archives.
        elapsed = time.monotonic() - (self.shutdown_started or started)
        budget = max(1.0, self.settings.shutdown_timeout - elapsed - 0.5)
        with anyio.move_on_after(budget) as scope:
            await self._archive_all(users, "shutdown", results)
        if self.settings.fsync == "everysec":
            await self.store.sync_dirty()
        log.info(
            "shutdown.done",
            archived=len(results),
            users=len(users),
            timed_out=scope.cancelled_caught,
            ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _archive_all(self, users: list[str], reason: str, results: list[Archived]) -> None:
        """Archive many dialogs in the journal's two passes, a batch per thread call.

        One archive() per user, 16 at a time, took 5.9 s for 10,000 dialogs at shutdown:
        three fsyncs each queueing behind each other's journal commits, and worker threads
        fighting over the GIL. In two passes (trailers, one syncfs, renames, one syncfs:
        see Journal.close) and in batches of users per worker-thread call, the same
        10,000 take 1.7 s. Each batch holds its users' locks, so a reply still being
        journaled goes first, as with archive().
        """
        journal = self.store.journal
        closed: list[tuple[str, Head]] = []

        def close_batch(batch: list[str]) -> list[tuple[str, _Outcome]]:
            return [(user, _attempt(journal.close, user, reason, owned=True)) for user in batch]

        def commit_batch(batch: list[tuple[str, Head]]) -> list[tuple[str, _Outcome]]:
            return [(user, _attempt(journal.commit, user, head)) for user, head in batch]

        for batch in _batches(users):
            outcomes, ms = await self._locked_run(batch, close_batch, batch)
            for user, outcome in outcomes:
                if isinstance(outcome, Head):
                    closed.append((user, outcome))
                else:
                    self._archive_outcome(user, reason, outcome, ms, results)
        await self.store.run(journal.sync_filesystem)
        for pairs in _batches(closed):
            outcomes, ms = await self._locked_run([u for u, _ in pairs], commit_batch, pairs)
            for user, outcome in outcomes:
                self._archive_outcome(user, reason, outcome, ms, results)
        await self.store.run(journal.sync_filesystem)

    async def _locked_run(
        self, users: list[str], func: Callable[[T], list[tuple[str, _Outcome]]], arg: T
    ) -> tuple[list[tuple[str, _Outcome]], float]:
        """``func(arg)`` in a worker thread under the users' locks; and ms per user."""
        started = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            for user in users:
                await stack.enter_async_context(self.store.user_lock(user))
            outcomes = await self.store.run(func, arg)
        return outcomes, (time.monotonic() - started) * 1000 / max(1, len(users))

    def _archive_outcome(
        self, user: str, reason: str, outcome: _Outcome, ms: float, results: list[Archived]
    ) -> None:
        if isinstance(outcome, NotOwner):
            log.info("archive.skipped", user=user, reason=reason, owner=outcome.owner)
        elif isinstance(outcome, JournalError):
            # As in archive(): journal.error once per incident, each failure at DEBUG.
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
            self._note_archived(outcome, ms)  # ms: its share of the batch's time
            results.append(outcome)

    def _observed(self, what: Archived | Repaired) -> None:
        # Runs in a worker thread: logging is thread-safe, counters are only ints.
        if isinstance(what, Repaired):
            log.warning(
                "journal.repaired",
                user=what.user,
                torn_bytes=what.torn_bytes,
                side_file=what.side_file,
            )
        else:
            log.warning(
                "archive.finished",
                user=what.user,
                dialog=what.dialog,
                reason=what.reason,
                file=what.path,
            )
            if self.index is not None:
                self.index.submit(what.path)

    # -- presence -----------------------------------------------------------------------

    def connect(self, user: str) -> Inbox:
        scope = self._grace.pop(user, None)
        if scope is not None:
            scope.cancel()
            log.info("session.resumed", user=user)
        self._known.add(user)
        return self.hub.subscribe(user)

    def disconnect(self, inbox: Inbox) -> int:
        """Forget a connection; start the grace timer if it was the user's last one."""
        remaining = self.hub.unsubscribe(inbox)
        if remaining == 0 and not self.draining and inbox.user not in self._grace:
            self._start_grace(inbox.user)
        return remaining

    def _start_grace(self, user: str) -> None:
        if self._tg is None:
            return
        scope = anyio.CancelScope()
        self._grace[user] = scope
        self._tg.start_soon(self._grace_timer, user, scope)

    async def _grace_timer(self, user: str, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(self.settings.disconnect_grace)
        if self._grace.get(user) is scope:
            del self._grace[user]
        if scope.cancel_called or self.hub.count(user) or self.draining:
            return
        await self.archive(user, "disconnect", owned=True)

    # -- archiving ----------------------------------------------------------------------

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
        try:
            async with self.store.user_lock(user):
                result = await self.store.archive(user, reason, idle_for=idle_for, owned=owned)
        except NotOwner as exc:
            log.info("archive.skipped", user=user, reason=reason, owner=exc.owner)
            return None
        except JournalError as exc:
            self.incidents.failed(user, "archive", exc)
            log.debug("archive.failed", user=user, reason=reason, error=exc.kind, detail=exc.detail)
            if raise_errors:
                raise
            return None
        if result is None:
            return None
        self.incidents.succeeded(user)
        ms = (time.monotonic() - started) * 1000
        if self.metrics is not None:
            self.metrics.archive_seconds.observe(ms / 1000)
        self._note_archived(result, ms)
        return result

    def _note_archived(self, result: Archived, ms: float) -> None:
        """Count, log and announce an archive."""
        if not self.hub.count(result.user) and result.user not in self._chats:
            # Nothing of theirs is left here for a shutdown to archive: forget them, so
            # the set does not grow with every user a long-running process ever served.
            self._known.discard(result.user)
        self.archived[result.reason] += 1
        if self.metrics is not None:
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
        self.hub.publish(result.user, archived_event(result))
        if self.index is not None:
            self.index.submit(result.path)

    async def recover(self) -> None:
        """At start-up: repair torn journals, archive orphaned dialogs (reason recovery)."""
        started = time.monotonic()
        users = [
            u for u, _ in await self.store.run(lambda: list(self.store.journal.current_mtimes()))
        ]
        archived = 0
        for user in users:
            try:
                await self.store.settle(user)
            except JournalError as exc:
                # One user's unwritable journal must not keep the others from recovery.
                self.incidents.failed(user, "repair", exc)
                continue
            if self.instance is not None:
                owner = await self.store.run(self.store.journal.owner, user)
                if await self.store.run(self.instance.other_live_owner, owner):
                    continue  # a live instance's dialog, not an orphan
            if await self.archive(user, "recovery") is not None:
                archived += 1
        log.info(
            "recovery.run",
            dialogs=len(users),
            archived=archived,
            ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def sweep(self, older_than: float | None = None) -> int:
        """Archive every dialog idle for ``older_than`` seconds (default: the timeout)."""
        limit = self.settings.session_timeout if older_than is None else older_than
        started = time.monotonic()
        now = time.time()
        mtimes = await self.store.run(lambda: list(self.store.journal.current_mtimes()))
        stale = [user for user, mtime in mtimes if now - mtime >= limit and user not in self._chats]
        archived = 0
        for user in stale:
            # owned: a dialog another live process appended to last is that process's to
            # judge; its reply may be streaming right now (the file looks idle meanwhile).
            if await self.archive(user, "timeout", idle_for=limit, owned=True) is not None:
                archived += 1
        pruned = await self._prune() if self.settings.retention_days else 0
        if self.index is not None:
            self.index.refresh()  # archives other processes wrote or deleted meanwhile
        if self.metrics is not None:
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
        """Delete archives older than ARCHIVER_RETENTION_DAYS (review.prune: same as the CLI)."""
        journal = self.store.journal
        days = self.settings.retention_days
        pruned = await self.store.run(lambda: list(review.prune(journal, days)))
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
        if self.metrics is not None:
            self.metrics.pruned.inc(len(pruned))
        return len(pruned)

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
        journal = self.store.journal

        def moved(users: list[str]) -> list[tuple[str, str]]:
            owners = [(user, journal.owner(user)) for user in users]
            return [(u, o) for u, o in owners if o is not None and instance.other_live_owner(o)]

        while True:
            await anyio.sleep(self.settings.ping_interval)
            for user, owner in await self.store.run(moved, self.hub.users()):
                closed = self.hub.close_user(user, "moved")
                log.info("session.moved", user=user, owner=owner, connections=closed)

    async def _fsync_ticker(self) -> None:
        while True:
            await anyio.sleep(1.0)
            try:
                synced = await self.store.sync_dirty()
            except OSError as exc:
                log.debug("fsync.failed", error=type(exc).__name__, detail=str(exc))
                self.incidents.failed(None, "fsync", JournalError("io", f"fsync failed: {exc}"))
            else:
                if synced:
                    self.incidents.succeeded(None)

    # -- chat ---------------------------------------------------------------------------

    def stop(self, user: str) -> bool:
        """Stop the user's reply in flight; the partial reply is journaled as interrupted."""
        chat = self._chats.get(user)
        if chat is None or chat.stopped:
            return False
        chat.stopped = True
        if chat.scope is not None:
            chat.scope.cancel()
        return True

    async def chat(self, user: str, text: str) -> ChatResult:
        if self.draining:
            raise ShuttingDown()
        if user in self._chats:
            raise Busy()
        try:
            self._admit(user)
        except Refused as exc:
            if self.metrics is not None:
                self.metrics.refused.labels(exc.code).inc()
            raise
        chat = self._chats[user] = _Chat()
        try:
            async with self.store.user_lock(user):
                return await self._chat_locked(user, text, chat)
        finally:
            del self._chats[user]

    def _admit(self, user: str) -> None:
        """Refuse, before journaling anything, a chat over the rate or while the breaker is open."""
        now = time.monotonic()
        if self.rate_limit is not None:
            wait = self.rate_limit.take(user, now)
            if wait:
                raise Refused(
                    429,
                    "rate_limited",
                    "Too many messages; wait a moment before sending another.",
                    wait,
                )
        if self.breaker is not None:
            wait = self.breaker.retry_after(now)
            if wait:
                raise Refused(
                    503,
                    "upstream_unavailable",
                    "The assistant is unavailable right now; try again shortly.",
                    wait,
                )

    async def _chat_locked(self, user: str, text: str, chat: _Chat) -> ChatResult:
        asked = await self._append(user, "user", text)
        self.hub.publish(user, message_event(asked.dialog, asked.message))
        history = await self._history(user)
        message_id = f"{asked.dialog}:{asked.message.seq + 1}"
        self._publish_reply(user, "begin", message_id)
        request = ReplyRequest(user=user, dialog=asked.dialog, message=text, history=history)
        log.info(
            "reply.start",
            user=user,
            dialog=asked.dialog,
            responder=self.responder.name,
            history=len(history),
        )
        chunks: list[str] = []
        started = time.monotonic()
        first: float | None = None
        error: ReplyError | None = None
        with anyio.CancelScope() as scope:
            chat.scope = scope
            if chat.stopped:
                scope.cancel()
            try:
                # aclosing: a stop closes the producer now, and with it the upstream request.
                async with contextlib.aclosing(self.responder.reply(request)) as stream:
                    async for chunk in stream:
                        if first is None:
                            first = time.monotonic()
                        chunks.append(chunk)
                        self._publish_reply(user, "item", message_id, chunk)
            except ReplyError as exc:
                error = exc
        chat.scope = None
        interrupted = scope.cancelled_caught or chat.stopped or error is not None
        self._note_upstream(error)
        timing = {
            "ms": round((time.monotonic() - started) * 1000, 1),
            "first_token_ms": None if first is None else round((first - started) * 1000, 1),
        }
        # Shielded: once the user's message is journaled, its answer (or the failure)
        # must be too, even if this request is being cancelled.
        with anyio.CancelScope(shield=True):
            reply = None
            if chunks or error is None:
                reply = await self._append(user, "assistant", "".join(chunks), interrupted)
            if error is not None:
                return await self._reply_failed(user, asked, message_id, error, reply, timing)
        assert reply is not None
        if self.metrics is not None:
            self.metrics.reply_seconds.observe(time.monotonic() - started)
        self._publish_reply(user, "end", message_id, interrupted=interrupted)
        self.hub.publish(user, message_event(reply.dialog, reply.message))
        log.info(
            "reply.stopped" if interrupted else "reply.done",
            user=user,
            dialog=reply.dialog,
            seq=reply.message.seq,
            responder=self.responder.name,
            chars=len(reply.message.text),
            **timing,
        )
        return ChatResult(user_message=asked, reply=reply, interrupted=interrupted)

    def _publish_reply(
        self, user: str, kind: str, message_id: str, content: str = "", interrupted: bool = False
    ) -> None:
        data: dict[str, Any] = {"type": kind, "message_id": message_id, "content": content}
        if interrupted:
            data["interrupted"] = True
        self.hub.publish(user, Event("reply", data))

    def _note_upstream(self, error: ReplyError | None) -> None:
        if self.breaker is None:
            return
        if error is None:
            self.breaker.success()
        elif self.breaker.failure(time.monotonic()):
            log.warning(
                "breaker.open",
                responder=self.responder.name,
                failures=self.breaker.consecutive,
                cooldown=self.breaker.cooldown,
            )

    async def _reply_failed(
        self,
        user: str,
        asked: Appended,
        message_id: str,
        error: ReplyError,
        partial: Appended | None,
        timing: dict[str, Any],
    ) -> ChatResult:
        if self.metrics is not None:
            self.metrics.reply_errors.labels(error.kind).inc()
        log.warning(
            "reply.error",
            user=user,
            dialog=asked.dialog,
            kind=error.kind,
            upstream_status=error.upstream_status,
            responder=self.responder.name,
            chars=0 if partial is None else len(partial.message.text),
            **timing,
        )
        if partial is not None:
            self.hub.publish(user, message_event(partial.dialog, partial.message))
        entry = await self._append(user, "error", error.detail)
        self._publish_reply(user, "error", message_id, error.detail)
        self.hub.publish(user, message_event(entry.dialog, entry.message))
        raise error

    async def _append(self, user: str, role: str, text: str, interrupted: bool = False) -> Appended:
        try:
            appended = await self.store.append(user, role, text, interrupted)
        except JournalError as exc:
            self.incidents.failed(user, "append", exc)
            raise
        self.incidents.succeeded(user)
        self._known.add(user)
        if self.metrics is not None:
            self.metrics.appended.labels(role).inc()
        log.info(
            "chat.append",
            user=user,
            dialog=appended.dialog,
            seq=appended.message.seq,
            role=role,
            bytes=len(text.encode()),
            new_dialog=appended.new_dialog or None,
        )
        return appended

    async def _history(self, user: str) -> list[Message]:
        want = self.responder.history_messages
        if want <= 0:
            return []
        return await self.store.tail_messages(user, want)

    # -- streams ------------------------------------------------------------------------

    async def stream(
        self, inbox: Inbox, last_event_id: str | None, ping: float | None = None
    ) -> AsyncGenerator[list[Event], None]:
        """The events of one subscription, in bursts that each leave as one write: ready,
        the replay, then live events (and, with ``ping``, :data:`~archiver.hub.PING`
        every ``ping`` seconds of quiet)."""
        user = inbox.user
        head = await self.store.current_head(user)
        sent: dict[str, int] = {}
        yield [
            Event(
                "ready",
                {
                    "user": user,
                    "connection": inbox.id,
                    "dialog": head.dialog if head else None,
                    "messages": head.messages if head else 0,
                },
            )
        ]
        replay = [event async for event in self._replay(user, last_event_id, head)]
        for event in replay:
            _note_sent(sent, event)
        if replay:
            yield replay
        while (live := await inbox.take(ping)) is not None:
            # Messages the replay already sent may also be queued: skip those copies.
            fresh = [e for e in live if e.name != "message" or not _already_sent(sent, e)]
            for event in fresh:
                _note_sent(sent, event)
            if fresh:
                yield fresh

    async def _replay(
        self, user: str, last_event_id: str | None, head: Head | None
    ) -> AsyncIterator[Event]:
        parsed = parse_event_id(last_event_id)
        if parsed is None:
            return
        dialog_id, seq = parsed
        missed, archive = await self.store.messages_after(user, dialog_id, seq)
        if missed is not None:
            for message in missed.messages:
                yield message_event(missed.dialog, message)
        if archive is not None and missed is not None:
            yield Event(
                "archived", {"dialog": missed.dialog, "archive": archive, "reason": missed.reason}
            )
        # The dialog the client knew has ended: all of the current one is new to it.
        if (missed is None or archive is not None) and head is not None:
            current = await self.store.load_current(user)
            if current is not None:
                for message in current.messages:
                    yield message_event(current.dialog, message)

    # -- numbers ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": "draining" if self.draining else "ok",
            "uptime": round(time.time() - self.started_at, 1),
            "connections": self.hub.connections,
            "users": len(self.hub.users()),
            "replies": len(self._chats),
            "archived": dict(self.archived),
            "instance": self.instance.id if self.instance else None,
        }


_Outcome = Head | Archived | NotOwner | JournalError | None
BATCH = 200  # users per worker-thread call when archiving many at once


def _attempt(func: Callable[..., _Outcome], *args: Any, **kwargs: Any) -> _Outcome:
    """``func(...)``, with the failures a batch reports per user returned, not raised."""
    try:
        return func(*args, **kwargs)
    except (NotOwner, JournalError) as exc:
        return exc


def _batches(items: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


def parse_event_id(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    dialog, sep, seq = value.rpartition(":")
    if not sep or not dialog or not seq.isdigit():
        return None
    return dialog, int(seq)


def _note_sent(sent: dict[str, int], event: Event) -> None:
    if event.name == "message":
        dialog, seq = event.data["dialog"], event.data["seq"]
        sent[dialog] = max(sent.get(dialog, 0), seq)


def _already_sent(sent: dict[str, int], event: Event) -> bool:
    return bool(event.data["seq"] <= sent.get(event.data["dialog"], 0))
