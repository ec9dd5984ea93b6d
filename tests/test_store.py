"""The thread adapter between the event loop and the journal."""

from __future__ import annotations

import threading
from pathlib import Path

from archiver.journal import Journal
from archiver.store import Store


def test_the_store_starts_every_worker_thread_at_once(tmp_path: Path) -> None:
    """The thread count is fixed from start-up on, so a churn test's baseline holds."""

    def workers() -> int:
        return sum(t.name.startswith("archiver-journal") for t in threading.enumerate())

    before = workers()
    store = Store(Journal(tmp_path, fsync="no"), threads=5)
    try:
        assert workers() == before + 5
    finally:
        store.close()
