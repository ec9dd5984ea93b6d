"""Chats: the user's message, the streamed reply, the assistant's message, one at a time.

Chats of one user run under the user's lock (threads.py): the user's message is
journaled, the reply producer streams chunks (each published as a ``reply`` event), and
the assistant's message is journaled, shielded from cancellation, so a dialog is never
split between a question and its answer. Archiving waits for that lock. A stop cancels
the producer; the partial reply is journaled, marked interrupted. This class owns the
map of replies in flight.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from .broker import Broker
from .errors import JournalError
from .events import message_event, reply_event
from .hub import Hub
from .idempotency import Found, Repeated
from .incidents import Incidents
from .journal import Appended
from .limits import Breaker, RateLimit
from .logs import log
from .metrics import Metrics
from .replies import ReplyError, ReplyRequest, Responder
from .threads import JournalThreads


class Busy(Exception):
    """A reply for this user is still streaming."""


class ShuttingDown(Exception):
    """The server is draining; no new chats."""


class Refused(Exception):
    """A chat refused before anything was journaled (rate limit, open breaker); ``code``
    names why (app.py maps it to its HTTP status)."""

    def __init__(self, code: str, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


class KeyReused(Exception):
    """The Idempotency-Key was used before with a different message."""


class Unanswered(Exception):
    """The Idempotency-Key's message was journaled, but its reply never was (the server
    stopped while writing it, and the dialog went on or was archived since)."""

    def __init__(self, found: Found) -> None:
        super().__init__(found.asked.key)
        self.found = found


class Failed(Exception):
    """A repeat of a chat whose reply failed: the journaled error, once more."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass
class _Chat:
    text: str
    key: str | None
    scope: anyio.CancelScope | None = None
    stopped: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    result: ChatResult | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class ChatResult:
    user_message: Appended
    reply: Appended
    interrupted: bool
    archive: str | None = None  # a repeat answered from this archive

    def as_json(self) -> dict[str, Any]:
        reply: dict[str, Any] = {"seq": self.reply.message.seq, "text": self.reply.message.text}
        if self.interrupted:
            reply["interrupted"] = True
        out: dict[str, Any] = {
            "dialog": self.user_message.dialog,
            "seq": self.user_message.message.seq,
            "reply": reply,
        }
        if self.archive is not None:
            out["archive"] = self.archive
        return out


class Chats:
    def __init__(
        self,
        threads: JournalThreads,
        hub: Hub,
        responder: Responder,
        metrics: Metrics,
        incidents: Incidents,
        on_append: Callable[[str], None] = lambda user: None,
        rate_limit: RateLimit | None = None,
        breaker: Breaker | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.threads = threads
        # Every event goes through the broker: this instance's streams, then the others'.
        self.broker = broker if broker is not None else Broker(hub, None)
        self.responder = responder
        self.metrics = metrics
        self.incidents = incidents
        self.on_append = on_append
        self.rate_limit = rate_limit
        self.breaker = breaker
        self.draining = False
        self._chats: dict[str, _Chat] = {}

    def __len__(self) -> int:
        return len(self._chats)

    def __contains__(self, user: object) -> bool:
        return user in self._chats

    def __iter__(self) -> Iterator[str]:
        """The users with a chat in flight (a copy: the map changes as chats end)."""
        return iter(list(self._chats))

    def begin_shutdown(self) -> None:
        """No new chats; stop every reply in flight (each is journaled as interrupted)."""
        self.draining = True
        for chat in self._chats.values():
            chat.stopped = True
            if chat.scope is not None:
                chat.scope.cancel()

    def stop(self, user: str) -> bool:
        """Stop the user's reply in flight; the partial reply is journaled as interrupted."""
        chat = self._chats.get(user)
        if chat is None or chat.stopped:
            return False
        chat.stopped = True
        if chat.scope is not None:
            chat.scope.cancel()
        return True

    async def chat(self, user: str, text: str, key: str | None = None) -> ChatResult:
        if self.draining:
            raise ShuttingDown()
        running = self._chats.get(user)
        if running is not None:
            if key is not None and running.key == key:
                return await self._joined(running, text)
            raise Busy()
        try:
            self._admit(user)
        except Refused as exc:
            self.metrics.refused.labels(exc.code).inc()
            raise
        chat = self._chats[user] = _Chat(text, key)
        try:
            async with self.threads.user_lock(user):
                # The user's lock orders this process; the broker's claim the others: a
                # reply streaming on another instance makes this chat Busy, as it would here.
                if not await self.broker.acquire(user, "reply"):
                    raise Busy()
                try:
                    chat.result = await self._chat_locked(user, text, chat)
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.broker.release(user)
                return chat.result
        except BaseException as exc:
            chat.error = exc
            raise
        finally:
            del self._chats[user]
            chat.done.set()

    async def _joined(self, running: _Chat, text: str) -> ChatResult:
        """A repeat of the chat in flight: wait for it, and answer what it answers."""
        if running.text != text:
            raise KeyReused()
        await running.done.wait()
        if running.result is not None:
            return running.result
        if not isinstance(running.error, Exception):
            raise Busy()  # the first was cancelled: let the client try again
        raise running.error

    def _repeated(self, user: str, text: str, found: Found) -> ChatResult:
        """The first answer to a key, rebuilt from the journal or an archive."""
        if found.asked.text != text:
            raise KeyReused()
        if found.answer is None:
            if found.archive is None and found.last:
                raise Busy()  # another process is writing its reply now
            raise Unanswered(found)
        if found.answer.role == "error":
            raise Failed(found.answer.text)
        asked = Appended(user, found.dialog, found.asked, new_dialog=False)
        reply = Appended(user, found.dialog, found.answer, new_dialog=False)
        log.info(
            "chat.repeated",
            user=user,
            dialog=found.dialog,
            seq=found.asked.seq,
            archive=found.archive,
        )
        return ChatResult(asked, reply, found.answer.interrupted, found.archive)

    def _admit(self, user: str) -> None:
        """Refuse, before journaling anything, a chat over the rate or while the breaker is open."""
        now = time.monotonic()
        if self.rate_limit is not None:
            wait = self.rate_limit.take(user, now)
            if wait:
                detail = "Too many messages; wait a moment before sending another."
                raise Refused("rate_limited", detail, wait)
        if self.breaker is not None:
            wait = self.breaker.retry_after(now)
            if wait:
                detail = "The assistant is unavailable right now; try again shortly."
                raise Refused("upstream_unavailable", detail, wait)

    async def _chat_locked(self, user: str, text: str, chat: _Chat) -> ChatResult:
        # The history is read under the same flock as the append, from the same file.
        history_messages = self.responder.history_messages
        try:
            asked = await self._append(user, "user", text, history=history_messages, key=chat.key)
        except Repeated as repeat:
            return self._repeated(user, text, repeat.found)
        self.broker.publish(user, message_event(asked.dialog, asked.message))
        history = asked.history or []
        message_id = f"{asked.dialog}:{asked.message.seq + 1}"
        self.broker.publish(user, reply_event("begin", message_id))
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
                        self.broker.publish(user, reply_event("item", message_id, chunk))
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
                first_ms = None if first is None else int((first - started) * 1000)
                reply = await self._append(
                    user, "assistant", "".join(chunks), interrupted, first_token_ms=first_ms
                )
            if error is not None:
                return await self._reply_failed(user, asked, message_id, error, reply, timing)
        assert reply is not None
        self.metrics.reply_seconds.observe(time.monotonic() - started)
        self.broker.publish(user, reply_event("end", message_id, interrupted=interrupted))
        self.broker.publish(user, message_event(reply.dialog, reply.message))
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
            self.broker.publish(user, message_event(partial.dialog, partial.message))
        entry = await self._append(user, "error", error.detail)
        self.broker.publish(user, reply_event("error", message_id, error.detail))
        self.broker.publish(user, message_event(entry.dialog, entry.message))
        raise error

    async def _append(
        self,
        user: str,
        role: str,
        text: str,
        interrupted: bool = False,
        history: int = 0,
        key: str | None = None,
        first_token_ms: int | None = None,
    ) -> Appended:
        # An assistant or error entry records which upstream answered (for stats).
        upstream = None if role == "user" else self.responder.name
        try:
            appended = await self.threads.append(
                user, role, text, interrupted, history, key, upstream, first_token_ms
            )
        except JournalError as exc:
            self.incidents.failed(user, "append", exc)
            raise
        self.incidents.succeeded(user)
        self.on_append(user)
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
