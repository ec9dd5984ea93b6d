"""JournalThreads: the journal off the event loop, one user at a time."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from archiver.journal import Appended, Journal
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


async def test_one_turns_appends_go_in_one_thread_call_each_with_its_own_outcome(
    tmp_path: Path,
) -> None:
    threads = JournalThreads(Journal(tmp_path, fsync="no"), threads=2)
    names: dict[str, str] = {}
    results: dict[str, object] = {}

    def noting(user: str) -> None:
        names[user] = threading.current_thread().name

    real = threads.journal.append

    def append(user: str, role: str, text: str, **kwargs: object) -> object:
        noting(user)
        return real(user, role, text, **kwargs)  # type: ignore[arg-type]

    threads.journal.append = append  # type: ignore[method-assign]

    async def one(user: str, role: str) -> None:
        try:
            results[user] = await threads.append(user, role, f"hi from {user}")
        except ValueError as exc:
            results[user] = exc

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(one, f"u{n}", "user")
        tg.start_soon(one, "bad", "nobody")  # its error is its own
    assert isinstance(results.pop("bad"), ValueError)
    assert sorted(results) == [f"u{n}" for n in range(6)]
    for user, appended in results.items():
        assert isinstance(appended, Appended) and appended.message.text == f"hi from {user}"
    assert len(set(names.values())) == 1  # one worker-thread call for the turn
    threads.close()
