"""JournalThreads: the journal off the event loop, one user at a time."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from archiver.journal import Journal
from archiver.threads import JournalThreads

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_user_lock_orders_one_user_and_is_forgotten_after(tmp_path: Path) -> None:
    threads = JournalThreads(Journal(tmp_path, fsync="no"), threads=2)
    order: list[str] = []
    gate = anyio.Event()

    async def first() -> None:
        async with threads.user_lock("a"):
            order.append("first in")
            await gate.wait()
            order.append("first out")

    async def second() -> None:
        async with threads.user_lock("a"):
            order.append("second")

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert order == ["first in"], "the second waits for the first"
        gate.set()
    assert order == ["first in", "first out", "second"]
    assert threads._locks == {}, "no entry left for a user nobody holds"
    threads.close()


async def test_append_returns_the_history_read_under_the_same_lock(tmp_path: Path) -> None:
    threads = JournalThreads(Journal(tmp_path, fsync="no"))
    for text in ("one", "two"):
        await threads.append("a", "user", text)
    appended = await threads.append("a", "assistant", "three", history=2)
    assert [m.text for m in appended.history or []] == ["two", "three"]
    assert [m.text for m in await threads.tail_messages("a", 2)] == ["two", "three"]
    summary = await threads.current_summary("a")
    assert summary is not None and summary.messages == 3
    threads.close()


def test_every_worker_thread_starts_at_once(tmp_path: Path) -> None:
    """The thread count is fixed from start-up on, so a churn test's baseline holds."""

    def workers() -> int:
        return sum(t.name.startswith("archiver-journal") for t in threading.enumerate())

    before = workers()
    store = JournalThreads(Journal(tmp_path, fsync="no"), threads=5)
    try:
        assert workers() == before + 5
    finally:
        store.close()
