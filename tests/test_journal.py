from __future__ import annotations

import errno
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver import archives, fsops
from archiver import dialogfile as format_mod
from archiver import journal as journal_mod
from archiver.dialogfile import MARKER, parse_dialog
from archiver.errors import JournalError
from archiver.journal import Journal
from archiver.layout import BadUserId, archive_sort_key, user_dir_name, user_from_dir_name


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "data", fsync="no")


def current(journal: Journal, user: str) -> Path:
    return journal.layout.current_path(user)


def texts(path: Path) -> list[str]:
    return [m["text"] for m in yaml.safe_load(path.read_text())["messages"]]


# -- user ids --------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=20))  # 20 chars x 12 bytes encoded fits
def test_any_user_id_maps_reversibly_to_one_safe_component(user: str) -> None:
    name = user_dir_name(user)
    assert "/" not in name and "\0" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert user_from_dir_name(name) == user


def test_examples_from_the_design() -> None:
    assert user_dir_name("auth0|42") == "auth0%7C42"
    assert user_dir_name("..") == "%2E."
    assert user_dir_name("a/b") == "a%2Fb"
    assert user_dir_name("100%") == "100%25"


def test_unusable_user_ids_are_refused() -> None:
    with pytest.raises(BadUserId):
        user_dir_name("")
    with pytest.raises(BadUserId):
        user_dir_name("x" * 10_000)


# -- append ----------------------------------------------------------------------------


def test_first_append_writes_header_entry_and_marker(journal: Journal) -> None:
    appended = journal.append("a1", "user", "Hello!")
    data = current(journal, "a1").read_text()
    assert data.startswith(f"user: a1\ndialog: {appended.dialog}\nstarted: '")
    assert "messages:\n- seq: 1\n  role: user\n  at: '" in data
    assert data.endswith("  text: Hello!\n...\n")
    assert appended.new_dialog and appended.message.seq == 1
    doc = yaml.safe_load(data)
    assert doc["user"] == "a1" and doc["messages"][0]["text"] == "Hello!"


def test_appends_number_messages_and_keep_one_document(journal: Journal) -> None:
    for i in range(5):
        appended = journal.append("a1", "user" if i % 2 == 0 else "assistant", f"m{i}")
    assert appended.message.seq == 5 and not appended.new_dialog
    doc = yaml.safe_load(current(journal, "a1").read_text())
    assert [m["seq"] for m in doc["messages"]] == [1, 2, 3, 4, 5]
    assert current(journal, "a1").read_bytes().count(MARKER) == 1


def test_append_reads_and_writes_only_the_tail(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O(message): appending to a big journal reads a few KB and writes only the entry."""
    for i in range(300):
        journal.append("big", "user", f"message number {i} " + "x" * 200)
    size = current(journal, "big").stat().st_size
    assert size > 60_000
    read: list[int] = []
    written: list[int] = []
    real_pread, real_pwrite = os.pread, os.pwrite

    def pread(fd: int, n: int, offset: int) -> bytes:
        read.append(n)
        return real_pread(fd, n, offset)

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        written.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "pwrite", pwrite)
    journal.append("big", "user", "one more")
    assert sum(read) <= 4096 + 4096 + 256, read
    assert written and sum(written) < 200, written


def test_no_journal_until_the_first_message(journal: Journal) -> None:
    assert journal.current_summary("nobody") is None
    assert journal.load_current("nobody") is None
    assert not journal.layout.users_dir.exists()


# -- archive ---------------------------------------------------------------------------


def test_archive_appends_trailer_and_renames(journal: Journal) -> None:
    journal.append("a1", "user", "hi")
    journal.append("a1", "assistant", "hello")
    archived = journal.archive("a1", "disconnect")
    assert archived is not None and archived.messages == 2
    assert not current(journal, "a1").exists()
    doc = yaml.safe_load(archived.path.read_text())
    assert doc["reason"] == "disconnect" and doc["ended"].endswith("Z")
    assert [m["text"] for m in doc["messages"]] == ["hi", "hello"]
    assert archived.path.read_bytes().endswith(b"reason: disconnect\n...\n")


def test_no_archive_without_messages(journal: Journal) -> None:
    assert journal.archive("a1", "timeout") is None


def test_same_second_archives_get_suffixes(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        journal_mod.time,
        "strftime",
        lambda fmt, t=None: "2026-11-21-10-30-00" if "%Y-%m-%d-%H" in fmt else "20261121T103000Z",
    )
    names = []
    for i in range(3):
        journal.append("a1", "user", f"dialog {i}")
        archived = journal.archive("a1", "user")
        assert archived is not None
        names.append(archived.name)
    assert names == [
        "2026-11-21-10-30-00.yaml",
        "2026-11-21-10-30-00-2.yaml",
        "2026-11-21-10-30-00-3.yaml",
    ]
    assert journal.layout.archive_names("a1") == list(reversed(names))
    assert sorted(names, key=archive_sort_key) == names


def test_archive_never_overwrites(journal: Journal, tmp_path: Path) -> None:
    src = tmp_path / "src"
    dst = tmp_path / "dst"
    src.write_text("new")
    dst.write_text("old")
    with pytest.raises(FileExistsError):
        fsops.rename_noreplace(src, dst)
    assert dst.read_text() == "old" and src.exists()


def test_archive_with_stale_dialog_id_or_recent_activity_does_nothing(journal: Journal) -> None:
    journal.append("a1", "user", "hi")
    assert journal.archive("a1", "timeout", dialog="d-someone-else") is None
    assert journal.archive("a1", "timeout", idle_for=60) is None
    assert current(journal, "a1").exists()
    assert journal.archive("a1", "timeout", idle_for=0) is not None


def test_two_pass_archive_of_many_dialogs(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "data", fsync="always")
    for user in ("a1", "a2"):
        journal.append(user, "user", f"hi from {user}")
        journal.append(user, "assistant", "hello")
    closed = {user: journal.write_trailer(user, "shutdown") for user in ("a1", "a2", "nobody")}
    assert closed["nobody"] is None
    for user in ("a1", "a2"):  # pass 1 wrote the trailer and left the journal in place
        assert current(journal, user).read_bytes().endswith(b"reason: shutdown\n...\n")
    journal.sync_filesystem()
    done = [
        journal.move_to_archive(user, head) for user, head in closed.items() if head is not None
    ]
    journal.sync_filesystem()
    for archived, user in zip(done, ("a1", "a2"), strict=True):
        assert archived is not None and archived.user == user and archived.messages == 2
        assert archived.reason == "shutdown" and not current(journal, user).exists()
        doc = yaml.safe_load(archived.path.read_text())
        assert doc["reason"] == "shutdown" and texts(archived.path) == [f"hi from {user}", "hello"]


def test_two_pass_archive_when_another_process_finished_it_in_between(journal: Journal) -> None:
    journal.append("a1", "user", "hi")
    head = journal.write_trailer("a1", "shutdown")
    assert head is not None
    # Another process appends before our second pass: it finds the trailer, finishes the
    # archive (as after a crash), and starts a new dialog, which commit() must not touch.
    assert journal.append("a1", "user", "on another instance").new_dialog
    assert journal.move_to_archive("a1", head) is None
    [archive] = (journal.layout.dialogs_dir("a1") / "archived").glob("*.yaml")
    assert texts(archive) == ["hi"] and yaml.safe_load(archive.read_text())["reason"] == "shutdown"
    assert texts(current(journal, "a1")) == ["on another instance"]


def test_two_pass_archive_interrupted_after_the_first_pass_is_finished_later(
    journal: Journal,
) -> None:
    journal.append("a1", "user", "hi")
    assert journal.write_trailer("a1", "shutdown") is not None
    # The process dies here; the next start's recovery settles the journal.
    finished = journal.archive("a1", "recovery")
    assert finished is not None and finished.reason == "shutdown"
    assert texts(finished.path) == ["hi"] and not current(journal, "a1").exists()


def test_two_pass_archive_of_a_torn_journal_keeps_every_complete_entry(journal: Journal) -> None:
    journal.append("t", "user", "whole")
    journal.append("t", "user", "torn")
    path = current(journal, "t")
    path.write_bytes(path.read_bytes()[:-20])
    head = journal.write_trailer("t", "shutdown")
    assert head is not None and head.messages == 1
    journal.sync_filesystem()
    archived = journal.move_to_archive("t", head)
    assert archived is not None and texts(archived.path) == ["whole"]


def test_two_pass_archive_respects_a_live_owner(tmp_path: Path) -> None:
    from archiver.journal import NotOwner

    a = Journal(tmp_path, fsync="no", instance="proc-a", alive={"proc-b"}.__contains__)
    b = Journal(tmp_path, fsync="no", instance="proc-b")
    b.append("u", "user", "on b")
    with pytest.raises(NotOwner):
        a.write_trailer("u", "shutdown", owned=True)
    assert not b.layout.current_path("u").read_bytes().endswith(b"reason: shutdown\n...\n")


def test_crash_between_trailer_and_rename_is_finished_once(journal: Journal) -> None:
    journal.append("a1", "user", "hi")
    path = current(journal, "a1")
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # what _archive_locked writes before its rename
        fh.seek(size - len(MARKER))
        fh.write(format_mod.trailer_text("2026-11-21T10:35:00.000Z", "timeout").encode() + MARKER)
    seen = []
    journal.observer = seen.append
    appended = journal.append("a1", "user", "after the crash")
    assert appended.new_dialog and appended.message.seq == 1
    [archive] = (journal.layout.dialogs_dir("a1") / "archived").glob("*.yaml")
    doc = yaml.safe_load(archive.read_text())
    assert doc["reason"] == "timeout" and texts(archive) == ["hi"]
    assert len(seen) == 1


def test_link_fallback_crash_after_link_is_not_duplicated(journal: Journal) -> None:
    journal.append("a1", "user", "hi")
    path = current(journal, "a1")
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size - len(MARKER))
        fh.write(
            format_mod.trailer_text("2026-11-21T10:35:00.000Z", "disconnect").encode() + MARKER
        )
    archived_dir = journal.layout.dialogs_dir("a1") / "archived"
    os.link(path, archived_dir / "2026-11-21-10-35-00.yaml")  # the unlink never ran
    assert journal.archive("a1", "timeout") is not None
    assert not path.exists()
    assert len(list(archived_dir.glob("*.yaml"))) == 1


# -- torn tails ------------------------------------------------------------------------


def _journal_with_torn_last_write(journal: Journal, cut: int, text: str) -> tuple[Path, bytes]:
    journal.append("t", "user", "complete one")
    journal.append("t", "assistant", "complete two\nwith two lines")
    path = current(journal, "t")
    whole = path.read_bytes()
    message = format_mod.Message(seq=3, role="user", at="2026-11-21T10:30:00.000Z", text=text)
    write = format_mod.message_text(message).encode() + MARKER
    base = len(whole) - len(MARKER)
    torn = whole[:base] + write[:cut] + whole[base + cut :]  # leftovers of the old marker
    path.write_bytes(torn)
    return path, write[:cut]


@pytest.mark.parametrize("text", ["short", "a multi-line\nmessage\nthat is cut\n  mid-way"])
def test_a_journal_torn_at_any_byte_keeps_every_complete_entry(tmp_path: Path, text: str) -> None:
    message = format_mod.Message(seq=3, role="user", at="2026-11-21T10:30:00.000Z", text=text)
    entry = len(format_mod.message_text(message).encode())
    whole = ["complete one", "complete two\nwith two lines"]
    for cut in range(1, entry + len(MARKER)):
        journal = Journal(tmp_path / f"cut{cut}", fsync="no")
        path, torn_bytes = _journal_with_torn_last_write(journal, cut, text)
        seen: list[object] = []
        journal.observer = seen.append
        dialog = journal.load_current("t")
        assert dialog is not None
        # Cut inside the entry, or right after it (no marker: a cut literal block looks
        # the same), the entry is set aside. Cut inside the new marker: the
        # entry is whole and kept, only the marker's fragment is set aside.
        kept = whole if cut <= entry else [*whole, text]
        assert [m.text for m in dialog.messages] == kept, cut
        [side] = path.parent.glob("current.yaml.torn-*")
        if cut <= entry:  # the torn bytes, and what is left of the old marker after them
            assert side.read_bytes() == torn_bytes + MARKER[cut:], cut
        else:
            assert side.read_bytes() == torn_bytes[entry:], cut
        assert path.read_bytes().endswith(b"\n...\n")
        assert journal.append("t", "user", "next").message.seq == len(kept) + 1
        assert len(seen) == 1


def test_a_torn_first_write_sets_the_whole_file_aside(journal: Journal) -> None:
    journal.append("t", "user", "only")
    path = current(journal, "t")
    data = path.read_bytes()
    for cut in (5, 30, len(data) - 6):
        path.write_bytes(data[:cut])
        assert journal.load_current("t") is None
        assert not path.exists()
    assert len(list(path.parent.glob("current.yaml.torn-*"))) == 3


def test_zeros_after_the_marker_are_dropped_without_a_side_file(journal: Journal) -> None:
    journal.append("t", "user", "one")
    path = current(journal, "t")
    with open(path, "ab") as fh:
        fh.write(b"\0" * 512)  # space reserved by fallocate, never written
    dialog = journal.load_current("t")
    assert dialog is not None and [m.text for m in dialog.messages] == ["one"]
    assert not list(path.parent.glob("current.yaml.torn-*"))


# -- disk trouble ----------------------------------------------------------------------


def test_disk_full_fails_cleanly_and_leaves_the_journal_intact(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal.append("a1", "user", "before")
    before = current(journal, "a1").read_bytes()

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(JournalError) as info:
        journal.append("a1", "user", "lost?")
    assert info.value.kind == "no_space"
    assert current(journal, "a1").read_bytes() == before
    monkeypatch.undo()
    assert journal.append("a1", "user", "after").message.seq == 2


def test_a_failing_write_restores_the_marker(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal.append("a1", "user", "before")
    before = current(journal, "a1").read_bytes()
    real = os.pwrite

    def short_then_fail(fd: int, data: bytes, offset: int) -> int:
        if len(data) > 20:
            real(fd, bytes(data)[:10], offset)
            raise OSError(errno.EIO, "I/O error")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", short_then_fail)
    with pytest.raises(JournalError) as info:
        journal.append("a1", "user", "this one fails half-way")
    assert info.value.kind == "io"
    monkeypatch.undo()
    assert current(journal, "a1").read_bytes() == before


# -- fsync -----------------------------------------------------------------------------


def test_fsync_policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
    always = Journal(tmp_path / "always", fsync="always")
    always.append("u", "user", "x")
    assert len(synced) == 1
    everysec = Journal(tmp_path / "everysec", fsync="everysec")
    everysec.append("u", "user", "x")
    everysec.append("u", "user", "y")
    assert len(synced) == 1, "everysec does not sync on the append"
    assert everysec.sync_dirty() == 1 and len(synced) == 2
    assert everysec.sync_dirty() == 0
    never = Journal(tmp_path / "no", fsync="no")
    never.append("u", "user", "x")
    assert never.sync_dirty() == 0 and len(synced) == 2


# -- reading ---------------------------------------------------------------------------


def test_head_and_listing_read_only_the_ends(journal: Journal) -> None:
    for i in range(3):
        journal.append("a1", "user", f"m{i}")
    head = journal.current_summary("a1")
    assert head is not None and head.messages == 3 and head.last_at
    journal.archive("a1", "user")
    [info] = archives.user_archives(journal, "a1")
    assert (info.messages, info.reason) == (3, "user") and info.ended


def test_messages_after_from_current_and_from_archive(journal: Journal) -> None:
    first = journal.append("a1", "user", "one")
    journal.append("a1", "assistant", "two")
    missed, archive = archives.messages_after(journal, "a1", first.dialog, 1)
    assert archive is None and missed is not None
    assert [m.text for m in missed.messages] == ["two"]
    archived = journal.archive("a1", "disconnect")
    assert archived is not None
    missed, archive = archives.messages_after(journal, "a1", first.dialog, 0)
    assert archive == archived.name and missed is not None and len(missed.messages) == 2


def test_parse_falls_back_to_ruamel_for_hand_written_files() -> None:
    text = (
        "user: x\ndialog: d-1\nstarted: '2026'\nmessages:\n"
        "  - {seq: 1, role: user, at: 't', text: hi}\n"
    )
    dialog = parse_dialog(text.encode())
    assert dialog.messages[0].text == "hi"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=5))
def test_what_is_appended_is_what_is_read(
    tmp_path_factory: pytest.TempPathFactory, messages: list[str]
) -> None:
    journal = Journal(tmp_path_factory.mktemp("j"), fsync="no")
    for text in messages:
        journal.append("p", "user", text)
    dialog = journal.load_current("p")
    assert dialog is not None and [m.text for m in dialog.messages] == messages
    assert texts(journal.layout.current_path("p")) == messages


# -- two processes ---------------------------------------------------------------------


def _hammer(data: str, worker: int, count: int) -> None:
    journal = Journal(Path(data), fsync="no")
    for i in range(count):
        journal.append("shared", "user", f"w{worker}-{i}")
        if i % 17 == 16:
            journal.archive("shared", "user")


def test_two_processes_neither_lose_nor_duplicate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(data), w, 120)) for w in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    journal = Journal(data, fsync="no")
    seen: list[str] = []
    files = [
        journal.layout.dialogs_dir("shared") / "archived" / n
        for n in journal.layout.archive_names("shared")
    ]
    if journal.layout.current_path("shared").exists():
        files.append(journal.layout.current_path("shared"))
    for path in files:
        doc = yaml.safe_load(path.read_text())
        assert [m["seq"] for m in doc["messages"]] == list(range(1, len(doc["messages"]) + 1))
        seen += [m["text"] for m in doc["messages"]]
    assert sorted(seen) == sorted(f"w{w}-{i}" for w in range(3) for i in range(120))
    for w in range(3):  # each worker's own messages stay in its order
        own = [t for t in seen if t.startswith(f"w{w}-")]
        assert len(own) == 120


# -- ownership -------------------------------------------------------------------------


def test_append_records_the_owner_and_owned_archive_respects_a_live_other(tmp_path: Path) -> None:
    from archiver.journal import NotOwner

    live = {"proc-a", "proc-b"}
    a = Journal(tmp_path, fsync="no", instance="proc-a", alive=live.__contains__)
    b = Journal(tmp_path, fsync="no", instance="proc-b", alive=live.__contains__)
    a.append("u", "user", "on a")
    assert a.owner("u") == "proc-a"
    b.append("u", "user", "moved to b")
    assert a.owner("u") == "proc-b"
    with pytest.raises(NotOwner) as info:
        a.archive("u", "shutdown", owned=True)
    assert info.value.owner == "proc-b"
    assert a.layout.current_path("u").exists()
    live.discard("proc-b")  # b died: its dialog is anyone's to archive
    archived = a.archive("u", "shutdown", owned=True)
    assert archived is not None and archived.messages == 2


def test_a_torn_idle_dialog_is_repaired_and_archived_by_one_sweep(journal: Journal) -> None:
    journal.append("t", "user", "long ago")
    journal.append("t", "user", "torn")
    path = current(journal, "t")
    path.write_bytes(path.read_bytes()[:-20])  # cut inside the last entry
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    archived = journal.archive("t", "timeout", idle_for=600)
    assert archived is not None and archived.messages == 1
    assert texts(archived.path) == ["long ago"]


def test_journals_and_archives_pass_yamllint_relaxed(journal: Journal) -> None:
    """Every file we write, journal and archive alike, header and trailer included."""
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    relaxed = YamlLintConfig("extends: relaxed")

    def errors(path: Path) -> list[str]:
        found = linter.run(path.read_text(), relaxed)
        return [f"{p.line}:{p.column} {p.rule}" for p in found if p.level == "error"]

    for text in ("Hello!", "a reply  \nwith a hard break", "multi\nline\n", "no", "x: y #z"):
        journal.append("auth0|42", "user", text)
        journal.append("auth0|42", "assistant", text, interrupted=True)
    assert errors(current(journal, "auth0|42")) == []
    archived = journal.archive("auth0|42", "disconnect")
    assert archived is not None
    assert errors(archived.path) == [], archived.path.read_text()


def test_a_journal_damaged_at_runtime_is_moved_aside_and_the_user_goes_on(
    tmp_path: Path,
) -> None:
    from archiver.repair import Damaged

    journal = Journal(tmp_path)
    seen: list[object] = []
    journal.observer = seen.append
    first = journal.append("a", "user", "hello")
    path = journal.layout.current_path("a")
    garbled = path.read_bytes().replace(b"- seq: 1", b"- seq: x")
    path.write_bytes(garbled)
    again = journal.append("a", "user", "hello again")
    assert again.new_dialog and again.dialog != first.dialog and again.message.seq == 1
    aside = list(path.parent.glob("current.yaml.damaged-*"))
    assert [p.read_bytes() for p in aside] == [garbled]
    assert len(seen) == 1 and isinstance(seen[0], Damaged) and seen[0].side_file == aside[0]
    assert journal.archive("a", "user") is not None, "the fresh dialog archives as usual"
    assert list(path.parent.glob("current.yaml.damaged-*")) == aside, "never archived"
