"""The admin feed: listeners, and the watcher that runs only while someone listens."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from archiver.feed import FEED, Feed
from archiver.hub import Event
from archiver.journal import Journal

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_an_archive_reaches_the_feed_and_a_user_filter(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync="no")
    feed = Feed(journal)
    async with anyio.create_task_group() as tg:
        feed.start(tg)
        everyone, only_b = feed.subscribe(), feed.subscribe("b")
        assert everyone.user == FEED
        assert await feed.watching()
        journal.append("a", "user", "hello")
        archived = journal.archive("a", "user")
        assert archived is not None
        with anyio.fail_after(10):
            events = await everyone.take()
        assert events is not None and events[0].name == "archive"
        assert events[0].data["user"] == "a" and events[0].data["name"] == archived.name
        assert only_b.pending is None, "a listener for user b hears nothing of a"
        feed.close_all("shutdown", Event("shutdown", {}))
        assert everyone.closed == "shutdown"
        feed.unsubscribe(everyone)
        feed.unsubscribe(only_b)
        tg.cancel_scope.cancel()
