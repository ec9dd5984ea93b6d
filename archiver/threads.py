"""The journal, as the event loop sees it: per-user ordering, and no disk I/O on the loop.

Every :class:`~archiver.journal.Journal` call runs in a worker thread (a slow disk or an
fsync never stalls other users' streams). A per-user ``asyncio.Lock`` keeps one user's
operations in arrival order inside this process and keeps them from occupying several
worker threads that would only queue on the same ``flock``; the ``flock`` taken inside
the journal orders them against other processes.

The threads are a ``ThreadPoolExecutor`` of this module's own rather than
``anyio.to_thread``: a chat makes two calls, and anyio's hop (capacity limiter, cancel
scope, a ``queue.Queue`` per worker) cost 55 us of wall time against 19 us here, which
at full load was 773 against 937 chats/s. A cancelled caller still waits for its call
to finish, as with anyio's default, so nothing on disk changes after it moved on.

Appends go one step further (:meth:`JournalThreads.append`): those of one event-loop
turn (50 users chatting make several per turn) go to a worker thread as one call, not a
hop each; each is still the same ``Journal.append``, with its own result or exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, ParamSpec, TypeVar

import anyio

from . import archives
from .archives import ArchiveInfo
from .commit import Archived
from .dialogfile import Dialog, Message, Summary
from .journal import Appended, Journal
from .repair import Repaired

P = ParamSpec("P")
T = TypeVar("T")


def _start_every_worker(executor: ThreadPoolExecutor, threads: int) -> None:
    """Start all of ``executor``'s threads now, not one by one as load first needs them.

    A ThreadPoolExecutor starts a thread per submit that finds none idle, so how many a
    process holds depended on the busiest moment so far; from start-up on it is fixed,
    and a thread count that grows (the churn tests compare it with a baseline) is a leak.
    Each call blocks its thread on one barrier, so no thread is idle for the next submit.
    """
    barrier = threading.Barrier(threads + 1)
    for _ in range(threads):
        executor.submit(barrier.wait, 10)
    barrier.wait(10)


@dataclass
class _UserLock:
    lock: anyio.Lock
    users: int = 0


class JournalThreads:
    """The journal for async callers: each call in a worker thread, per-user locks."""

    def __init__(self, journal: Journal, threads: int = 16) -> None:
        self.journal = journal
        self._locks: dict[str, _UserLock] = {}
        # Bounded so a slow disk cannot take every worker thread from other work.
        # Divergence #3: a pool of our own, not anyio.to_thread (see the module docstring).
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="archiver-journal")
        _start_every_worker(self._executor, threads)
        # This loop turn's appends, sent to a worker thread together at its end.
        self._turn: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

    @asynccontextmanager
    async def user_lock(self, user: str) -> AsyncIterator[None]:
        """Hold the user's in-process lock (not reentrant)."""
        entry = self._locks.get(user)
        if entry is None:
            # fast_acquire: a free lock is taken without a trip through the event loop
            # (a shutdown takes 20,000 of them in a row).
            entry = self._locks[user] = _UserLock(anyio.Lock(fast_acquire=True))
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[user]  # no dict of every user ever seen

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        call = partial(func, *args, **kwargs)
        with anyio.CancelScope(shield=True):
            result = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        return result

    def submit(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """``func(...)`` in a worker thread from now on; its future, for callers that must
        not await before the call starts (a caller that stops waiting waits for it still)."""
        call = partial(func, *args, **kwargs)
        return asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def run_in_turn(self, call: Callable[[], T]) -> T:
        """``call()`` in a worker thread, in one thread call with the rest of this loop
        turn's; shielded as :meth:`run` is."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._turn.append((call, future))
        if len(self._turn) == 1:
            loop.call_soon(self._flush_turn, loop)  # runs after every task of this turn
        with anyio.CancelScope(shield=True):
            result = await future
        return result

    def _flush_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        calls, self._turn = self._turn, []
        self._executor.submit(_run_calls, loop, calls)

    def close(self) -> None:
        """Wait for the calls in flight, then let the threads go."""
        self._executor.shutdown(wait=True)

    # Callers hold user_lock() around these when order matters.

    async def append(
        self,
        user: str,
        role: str,
        text: str,
        interrupted: bool = False,
        history: int = 0,
        key: str | None = None,
        upstream: str | None = None,
        first_token_ms: int | None = None,
    ) -> Appended:
        call = partial(
            self.journal.append,
            user,
            role,
            text,
            interrupted=interrupted,
            history=history,
            key=key,
            upstream=upstream,
            first_token_ms=first_token_ms,
        )
        if self.journal.fsync == "always":
            # Each waits for its fdatasync: side by side in the pool, not one after another.
            return await self.run(call)
        return await self.run_in_turn(call)

    async def archive(
        self,
        user: str,
        reason: str,
        dialog: str | None = None,
        idle_for: float | None = None,
        owned: bool = False,
    ) -> Archived | None:
        return await self.run(
            self.journal.archive, user, reason, dialog=dialog, idle_for=idle_for, owned=owned
        )

    async def current_summary(self, user: str) -> Summary | None:
        return await self.run(self.journal.current_summary, user)

    async def tail_messages(self, user: str, count: int) -> list[Message]:
        return await self.run(self.journal.tail_messages, user, count)

    async def load_current(self, user: str) -> Dialog | None:
        return await self.run(self.journal.load_current, user)

    async def messages_after(
        self, user: str, dialog: str, seq: int
    ) -> tuple[Dialog | None, str | None]:
        return await self.run(archives.messages_after, self.journal, user, dialog, seq)

    async def list_archives(self, user: str) -> list[ArchiveInfo]:
        return await self.run(archives.user_archives, self.journal, user)

    async def read_archive(self, user: str, name: str) -> bytes | None:
        return await self.run(archives.read_archive, self.journal, user, name)

    async def finish_crashed(self, user: str) -> Archived | Repaired | None:
        return await self.run(self.journal.finish_crashed, user)

    async def sync_dirty(self) -> int:
        return await self.run(self.journal.sync_dirty)


def _run_calls(
    loop: asyncio.AbstractEventLoop, calls: list[tuple[Callable[[], Any], asyncio.Future[Any]]]
) -> None:
    """In a worker thread: each call in order, then every outcome back in one loop hop."""
    outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
    for call, future in calls:
        try:
            outcomes.append((future, call(), None))
        except BaseException as exc:  # the caller's to handle, as from its own call
            outcomes.append((future, None, exc))
    with contextlib.suppress(RuntimeError):  # the loop is closed: no one is waiting
        loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
