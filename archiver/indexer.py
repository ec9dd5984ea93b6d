"""The server's indexer: one worker thread that keeps the search index current.

The index itself (what is stored, how it syncs and searches) is :mod:`archiver.index`;
this is only how the server feeds it off the event loop: archives that landed or were
deleted, and syncs for what other processes wrote.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from pathlib import Path

from .index import BATCH_FILES, Index
from .logs import log


class Indexer:
    """Keeps an :class:`Index` current from one worker thread, off the event loop.

    ``submit(path)`` queues an archive that landed or was deleted; ``refresh()`` queues a
    sync (archives other processes wrote). The thread takes whatever is queued and
    applies it in one transaction. The first job is a full sync: the start-up catch-up.
    """

    _SYNC = "sync"
    _FULL = "full"

    def __init__(self, index: Index) -> None:
        self.index = index
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._queue.put(self._FULL)
        self._thread = threading.Thread(target=self._run, name="archiver-index", daemon=True)
        self._thread.start()

    def submit(self, path: Path | str) -> None:
        self._queue.put(str(path))

    def refresh(self) -> None:
        self._queue.put(self._SYNC)

    def stop(self) -> None:
        """Apply what is queued, then end the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self.index.close()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < BATCH_FILES:
                    batch.append(self._queue.get_nowait())
            stop = None in batch
            jobs = [job for job in batch if job is not None]
            self._apply(jobs)
            if stop:
                return

    def _apply(self, jobs: list[str]) -> None:
        paths = [job for job in jobs if job not in (self._SYNC, self._FULL)]
        try:
            if self._FULL in jobs:
                done = self.index.sync(full=True)
                log.info(
                    "index.sync",
                    indexed=done.indexed,
                    removed=done.removed,
                    files=done.seen,
                    ms=round(done.ms, 1),
                )
            elif self._SYNC in jobs:
                self.index.sync()
            if paths:
                self.index.update(paths)
        except Exception as exc:  # anything: the worker must outlive one bad batch
            # The files are the truth: a failed update only delays what search shows;
            # the next sync catches up.
            log.error("index.error", error=type(exc).__name__, detail=str(exc)[:200])
