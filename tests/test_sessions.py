"""Sessions driven directly, with a real journal on disk and a real task group."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from archiver import archives as archives_mod
from archiver.config import Settings
from archiver.hub import Hub
from archiver.journal import Journal
from archiver.replies import Echo
from archiver.sessions import Busy, Sessions, parse_event_id
from archiver.threads import JournalThreads
from tests.helpers import FakeClock, until


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    settings = Settings(
        data_dir=tmp_path, disconnect_grace=0.2, fsync="no", echo_delay=0.02, jwt_secret="x" * 32
    )
    journal = Journal(tmp_path, fsync="no")
    s = Sessions(
        settings=settings, threads=JournalThreads(journal), hub=Hub(), responder=Echo(0.02)
    )
    async with anyio.create_task_group() as tg:
        await s.run(tg)
        yield s
        tg.cancel_scope.cancel()
    s.threads.close()


def archives(s: Sessions, user: str) -> list[str]:
    return s.threads.journal.layout.archive_names(user)


@pytest.mark.anyio
async def test_last_disconnect_archives_after_the_grace(sessions: Sessions) -> None:
    inbox = sessions.connect("a")
    await sessions.chat("a", "hello")
    disconnected = time.time()
    sessions.disconnect(inbox)
    await until(lambda: archives(sessions, "a"), what="the archive after the grace")
    assert len(archives(sessions, "a")) == 1
    # The archive's own `ended` says the grace was kept, however slow this machine is
    # (a sleep of half the grace followed by "nothing yet" fails when the sleep overruns).
    [info] = archives_mod.user_archives(sessions.threads.journal, "a")
    assert info.ended is not None
    ended = datetime.fromisoformat(info.ended).timestamp()
    assert ended >= disconnected + 0.2 - 0.001, (disconnected, info.ended)  # ms resolution
    # The counter is updated after the file lands: wait for it too.
    await until(lambda: sessions.archived == {"disconnect": 1}, what="the archive to be counted")
    assert "a" not in sessions.archiver.served, "an archived, disconnected user is forgotten"


@pytest.mark.anyio
async def test_reconnect_within_the_grace_cancels_the_archive(sessions: Sessions) -> None:
    clock = FakeClock()
    sessions.presence.call_later = clock.call_later  # the grace passes when the test says so
    gone: list[str] = []
    on_gone = sessions.presence.on_gone

    async def spy(user: str) -> object:
        gone.append(user)
        return await on_gone(user)

    sessions.presence.on_gone = spy
    inbox = sessions.connect("a")
    await sessions.chat("a", "hello")
    sessions.disconnect(inbox)
    [first] = clock.timers
    # At once: no await between the two, so the grace timer cannot have fired yet.
    again = sessions.connect("a")
    assert clock.timers == [], "the reconnect cancels the timer"
    first.callback()  # even a cancelled timer's callback, were a clock to run it: nothing
    # Twice the grace passes (every task has run to its next wait on either side): the
    # cancelled timer must not archive, nor even call on_gone (the archive it would start).
    await anyio.wait_all_tasks_blocked()
    clock.advance(0.4)
    await anyio.wait_all_tasks_blocked()
    assert gone == []
    assert archives(sessions, "a") == []
    sessions.disconnect(again)
    assert len(clock.timers) == 1, "the second grace timer"
    clock.advance(0.2)
    await until(lambda: archives(sessions, "a"), what="the archive after the second disconnect")
    assert len(archives(sessions, "a")) == 1


@pytest.mark.anyio
async def test_archive_waits_for_the_reply_so_a_dialog_is_never_split(sessions: Sessions) -> None:
    results: list[object] = []

    async def chat() -> None:
        results.append(await sessions.chat("a", "one two three four"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(chat)
        # Once the question is journaled, the reply streams (4 words, 20 ms apart).
        await until(lambda: sessions.threads.journal.current_summary("a"), what="the question")
        with pytest.raises(Busy):
            await sessions.chat("a", "again")
        archived = await sessions.archive("a", "user")
    assert archived is not None and archived.messages == 2
    assert sessions.threads.journal.load_current("a") is None


@pytest.mark.anyio
async def test_drain_ends_streams_and_archives_with_reason_shutdown(sessions: Sessions) -> None:
    inbox = sessions.connect("a")
    await sessions.chat("a", "hello")
    await sessions.chat("b", "no subscription")
    await sessions.drain()
    names = []
    while (event := await inbox.get()) is not None:
        names.append(event.name)
    assert names[-1] == "shutdown" and inbox.closed == "shutdown"
    assert sessions.archived == {"shutdown": 2}
    sessions.disconnect(inbox)  # a shutdown end is not a disconnect: no grace timer
    assert sessions.presence.timers == {}


@pytest.mark.anyio
async def test_drain_archives_a_chat_admitted_before_the_shutdown_but_not_yet_journaled(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shutdown's archiving starts at begin_shutdown: a chat admitted before it whose
    first append has not been made (so its user is not yet served) is archived too."""
    gate = anyio.Event()
    real = sessions.threads.append

    async def held(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(sessions.threads, "append", held)
    async with anyio.create_task_group() as tg:

        async def chat() -> None:
            with contextlib.suppress(Exception):  # its reply is stopped by the shutdown
                await sessions.chat("c", "just before the shutdown")

        tg.start_soon(chat)
        await until(lambda: "c" in sessions.chats, what="the chat admitted")
        assert "c" not in sessions.archiver.served
        sessions.begin_shutdown()
        gate.set()
        await sessions.drain()
    [name] = archives(sessions, "c")
    archived = sessions.threads.journal.layout.archived_dir("c") / name
    assert b"just before the shutdown" in archived.read_bytes()


@pytest.mark.anyio
async def test_stream_replays_only_missed_messages_and_never_twice(sessions: Sessions) -> None:
    first = await sessions.chat("a", "one")
    await sessions.chat("a", "two")
    inbox = sessions.connect("a")
    stream = sessions.stream(inbox, f"{first.reply.dialog}:{first.reply.message.seq}")
    [ready] = await stream.__anext__()
    assert ready.name == "ready" and ready.data["messages"] == 4
    replayed = await stream.__anext__()
    assert [e.data["text"] for e in replayed] == ["two", "Echo: two"]
    await sessions.chat("a", "three")
    live = await stream.__anext__()
    # The queued copies of "two" were skipped; the chat's events come as one burst.
    assert [e.data["text"] for e in live if e.name == "message"] == ["three", "Echo: three"]
    await stream.aclose()


def test_parse_event_id() -> None:
    assert parse_event_id("d-20261121T103000Z-3f9a:12") == ("d-20261121T103000Z-3f9a", 12)
    for bad in (None, "", "nocolon", "d:", ":3", "d:x"):
        assert parse_event_id(bad) is None
