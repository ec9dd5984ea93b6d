"""The events of one subscription: ``ready``, the replay of what a reconnecting client
missed (``Last-Event-ID: <dialog>:<seq>``), then the live events from its inbox.

A replay sends the messages of the client's dialog after its seq, from the journal or,
if that dialog ended meanwhile, from its archive followed by ``archived``; then all of
the current dialog, which is new to the client. Live messages that the replay already
sent may also be queued: those copies are skipped. No per-user state lives here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from .dialogfile import Summary
from .events import archived_event, message_event, ready_event
from .hub import Event, Inbox
from .threads import JournalThreads


async def _here(user: str) -> None:
    return None


class Replay:
    def __init__(
        self, threads: JournalThreads, listening: Callable[[str], Awaitable[None]] = _here
    ) -> None:
        self.threads = threads
        # The broker's: until events published on other instances reach this one, so
        # that what follows `ready` is complete.
        self.listening = listening

    async def stream(
        self, inbox: Inbox, last_event_id: str | None, ping: float | None = None
    ) -> AsyncGenerator[list[Event], None]:
        """The events of one subscription, in bursts that each leave as one write: ready,
        the replay, then live events (and, with ``ping``, :data:`~archiver.hub.PING`
        every ``ping`` seconds of quiet)."""
        user = inbox.user
        await self.listening(user)
        summary = await self.threads.current_summary(user)
        sent: dict[str, int] = {}
        dialog, count = (summary.dialog, summary.messages) if summary else (None, 0)
        yield [ready_event(user, inbox.id, dialog, count)]
        replay = [event async for event in self._replay(user, last_event_id, summary)]
        for event in replay:
            _note_sent(sent, event)
        if replay:
            yield replay
        # Not held while the stream idles (this frame lives as long as the stream).
        del summary, replay
        while (live := await inbox.take(ping)) is not None:
            fresh = [e for e in live if e.name != "message" or not _already_sent(sent, e)]
            for event in fresh:
                _note_sent(sent, event)
            if fresh:
                yield fresh

    async def _replay(
        self, user: str, last_event_id: str | None, summary: Summary | None
    ) -> AsyncIterator[Event]:
        parsed = parse_event_id(last_event_id)
        if parsed is None:
            return
        dialog_id, seq = parsed
        missed, archive = await self.threads.messages_after(user, dialog_id, seq)
        if missed is not None:
            for message in missed.messages:
                yield message_event(missed.dialog, message)
        if archive is not None and missed is not None:
            yield archived_event(missed.dialog, archive, missed.reason)
        # The dialog the client knew has ended: all of the current one is new to it.
        if (missed is None or archive is not None) and summary is not None:
            current = await self.threads.load_current(user)
            if current is not None:
                for message in current.messages:
                    yield message_event(current.dialog, message)


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
