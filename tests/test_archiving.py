"""archiving.GroupCommit and commit_group: disconnects at the same moment share fsyncs,
and each dialog is still archived exactly once, durable before it is announced."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from archiver import archiving
from archiver import dialogfile as fmt
from archiver.archiving import Archiver, commit_group
from archiver.commit import Archived
from archiver.config import Settings
from archiver.errors import JournalError
from archiver.hub import Hub
from archiver.incidents import Incidents
from archiver.journal import Journal
from archiver.metrics import Metrics
from archiver.owners import Instance
from archiver.threads import JournalThreads
from tests.helpers import until

USERS = [f"u{n}" for n in range(12)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _journal(tmp_path: Path) -> Journal:
    journal = Journal(tmp_path, fsync="always")
    for user in USERS:
        journal.append(user, "user", f"hello from {user}")
        journal.append(user, "assistant", "hi")
    return journal


@pytest.fixture
async def archiver(tmp_path: Path) -> AsyncIterator[Archiver]:
    threads = JournalThreads(_journal(tmp_path), threads=4)
    hub = Hub()
    settings = Settings(data_dir=tmp_path, fsync="always", jwt_secret="x" * 32)
    metrics = Metrics(lambda: hub.connections, lambda: len(hub.users()))
    yield Archiver(settings, threads, hub, metrics, Incidents())
    threads.close()


def _archived_once(journal: Journal, user: str) -> None:
    names = journal.layout.archive_names(user)
    assert len(names) == 1, (user, names)
    assert not journal.layout.current_path(user).exists()
    data = (journal.layout.archived_dir(user) / names[0]).read_bytes()
    assert fmt.parse_dialog(data).messages[0].text == f"hello from {user}"


def test_a_group_archives_each_dialog_once_and_skips_users_without_one(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    outcomes = commit_group(journal, [(u, "disconnect", True) for u in [*USERS, "nobody"]])
    assert [type(o) for o in outcomes] == [Archived] * len(USERS) + [type(None)]
    for user, outcome in zip(USERS, outcomes, strict=False):
        assert isinstance(outcome, Archived) and outcome.reason == "disconnect"
        _archived_once(journal, user)


def test_a_failed_sync_renames_nothing_and_the_next_archive_finishes_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = _journal(tmp_path)

    def failing() -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(journal, "sync_filesystem", failing)
    outcomes = commit_group(journal, [(u, "disconnect", True) for u in USERS])
    assert all(isinstance(o, JournalError) and o.kind == "io" for o in outcomes)
    for user in USERS:  # trailer written, not durable: not renamed
        assert journal.layout.archive_names(user) == []
        assert fmt.tail_state(journal.layout.current_path(user).read_bytes()[-256:]) == "pending"
    monkeypatch.undo()
    for user in USERS:
        assert isinstance(journal.archive(user, "disconnect"), Archived)
        _archived_once(journal, user)


@pytest.mark.anyio
async def test_disconnects_at_the_same_moment_go_in_shared_groups(
    archiver: Archiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real = archiving.commit_group

    def counted(journal: Journal, group: list[tuple[str, str, bool]]) -> list[object]:
        sizes.append(len(group))
        return list(real(journal, group))

    monkeypatch.setattr(archiving, "commit_group", counted)
    results: dict[str, Archived | None] = {}

    async def disconnect(user: str) -> None:
        results[user] = await archiver.archive(user, "disconnect", owned=True)

    async with anyio.create_task_group() as tg:
        for user in USERS:
            tg.start_soon(disconnect, user)
    assert sum(sizes) == len(USERS) and max(sizes) > 1, sizes
    for user in USERS:
        assert isinstance(results[user], Archived)
        _archived_once(archiver.threads.journal, user)
    # a second disconnect finds nothing left to archive
    assert await archiver.archive(USERS[0], "disconnect", owned=True) is None


@pytest.mark.anyio
async def test_streams_of_a_dialog_another_live_instance_owns_end_and_alone_none_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_follow_owners ends the streams of a user whose dialog another running instance
    appended to last; alone on the data directory it reads no owner at all."""
    me, other = Instance(tmp_path), Instance(tmp_path)
    Journal(tmp_path, fsync="no", instance=other.id).append("moved", "user", "hi there")
    journal = Journal(tmp_path, fsync="no", instance=me.id)
    threads = JournalThreads(journal, threads=2)
    hub = Hub()
    settings = Settings(data_dir=tmp_path, fsync="no", jwt_secret="x" * 32, ping_interval=0.01)
    metrics = Metrics(lambda: hub.connections, lambda: len(hub.users()))
    archiver = Archiver(settings, threads, hub, metrics, Incidents(), me)
    asked: list[str] = []
    owner = journal.owner

    def counted(user: str) -> str | None:
        asked.append(user)
        return owner(user)

    alone_seen: list[bool] = []  # what each turn of the loop was told
    alone = me.alone

    def watched() -> bool:
        alone_seen.append(alone())
        return alone_seen[-1]

    monkeypatch.setattr(journal, "owner", counted)
    monkeypatch.setattr(me, "alone", watched)
    moved, stays = hub.subscribe("moved"), hub.subscribe("stays")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(archiver._follow_owners)
            await until(lambda: moved.closed, what="the moved user's stream ended")
            assert moved.closed == "moved" and stays.closed is None
            other.close()  # alone again: the owners are no longer read
            # A turn told "alone" began after every earlier turn's walk had ended.
            await until(lambda: alone_seen[-1:] == [True], what="a turn told alone")
            count, turns = len(asked), len(alone_seen)
            await until(lambda: len(alone_seen) >= turns + 3, what="three more turns")
            assert alone_seen[turns:] == [True] * (len(alone_seen) - turns)
            assert len(asked) == count, "owners read while alone"
            tg.cancel_scope.cancel()
    finally:
        threads.close()
        me.close()
