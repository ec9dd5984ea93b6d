"""Disk trouble under a live server: full, read-only, and a permission error for one user.

The users' directory is a small tmpfs mounted for the test (``mount -t tmpfs -o size=2m``),
filled up or remounted read-only while the server runs; the permission error is an
immutable journal (``chattr +i``: root ignores file modes). Chats answer 507/503 with a
JSON error and write nothing; reads and other users go on; once the disk is back the same
server recovers. The error is logged once per incident (``journal.error``), and the
recovery once (``journal.recovered``).

Needs root (mount, chattr); without it the tests skip, or fail under ARCHIVER_REQUIRE_E2E=1.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import Server, SSEClient, mint, run_root, unavailable, wait_for
from tests.invariants import check_exactly_once, stray_files

Make = Callable[..., Server]
BIG = "x" * 5000  # more than a page: an append always needs a new block


@dataclass
class SmallDisk:
    data: Path

    @property
    def users(self) -> Path:
        return self.data / "users"

    @property
    def filler(self) -> Path:
        return self.users / ".filler"

    def fill(self) -> None:
        """Write until the filesystem refuses one more byte."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 1):
                for _ in range(100_000):
                    try:
                        os.write(fd, b"\0" * size)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        done = run_root("mount", "-o", f"remount,{mode}", str(self.users))
        assert done.returncode == 0, done.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        unavailable("needs root to mount a small tmpfs for the users' directory")
    disk = SmallDisk(tmp_path / "data")
    disk.users.mkdir(parents=True)
    mounted = run_root("mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(disk.users))
    if mounted.returncode != 0:
        unavailable(f"mount -t tmpfs failed here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        run_root("umount", "-l", str(disk.users))


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != ".filler"
    }


def error_of(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["detail"].endswith("."), body
    assert "Traceback" not in response.text
    return str(body["error"])


def assert_nothing_half_written(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """Files that were there are unchanged; new ones are only empty lock files."""
    for name, content in before.items():
        assert after.get(name) == content, f"{name} changed"
    for name in set(after) - set(before):
        assert name.endswith("/.lock") and after[name] == b"", f"{name} was written"


def test_full_disk_answers_507_writes_nothing_logs_once_and_recovers(
    make_server: Make, small_disk: SmallDisk
) -> None:
    server = make_server(
        data=small_disk.data, disconnect_grace="60", rate_limit="0", echo_delay="0"
    )
    accepted: list[tuple[str, str]] = []

    def chat(text: str) -> httpx.Response:
        response = server.chat("a", text)
        if response.status_code == 200:
            accepted.append((text, response.json()["reply"]["text"]))
        return response

    assert chat("before " + BIG).status_code == 200
    with SSEClient(server.url, mint("watcher")) as watcher:
        watcher.next("ready")
        for incident in (1, 2):
            small_disk.fill()
            before = snapshot(small_disk.users)
            for i in range(4):
                assert error_of(r := chat(f"full {incident}.{i} {BIG}")) == "no_space", r
                assert r.status_code == 507
                newcomer = server.chat(f"new{incident}.{i}", "hello")
                assert newcomer.status_code == 507 and error_of(newcomer) == "no_space"
            assert_nothing_half_written(before, snapshot(small_disk.users))
            # Reading goes on: the dialog, the archives, health, the other user's stream.
            dialog = httpx.get(server.url + "/dialog", headers=server.headers("a")).json()
            assert [m["text"] for m in dialog["messages"]][:1] == ["before " + BIG]
            assert httpx.get(server.url + "/health").json()["status"] == "ok"
            assert not watcher.closed.is_set()
            errors = server.wait_log("journal.error", incident)
            assert len(errors) == incident, ("once per incident", errors)
            small_disk.free()
            assert chat(f"after {incident}").status_code == 200, "recovered without a restart"
            wait_for(lambda i=incident: len(server.log_lines("journal.recovered")) == i)
    # Archiving on a full disk: done whole (the trailer fit in the journal's last block and
    # a rename needs no space), or refused with nothing written.
    small_disk.fill()
    before = snapshot(small_disk.users)
    archived = httpx.post(server.url + "/dialog/archive", headers=server.headers("a"))
    if archived.status_code == 507:
        assert error_of(archived) == "no_space"
        assert_nothing_half_written(before, snapshot(small_disk.users))
    small_disk.free()
    if archived.status_code != 200:
        archived = httpx.post(server.url + "/dialog/archive", headers=server.headers("a"))
    assert archived.status_code == 200 and archived.json()["archive"], archived.text
    [error_line] = server.log_lines("journal.error")[:1]
    assert "kind=no_space" in error_line
    check_exactly_once(small_disk.users, "a", accepted)
    assert stray_files(small_disk.data) == []
    assert "Traceback" not in server.log()


def test_read_only_data_directory_answers_503_keeps_reading_and_recovers(
    make_server: Make, small_disk: SmallDisk
) -> None:
    server = make_server(data=small_disk.data, disconnect_grace="60", echo_delay="0")
    assert server.chat("a", "one").status_code == 200
    assert server.chat("b", "two").status_code == 200
    archived = httpx.post(server.url + "/dialog/archive", headers=server.headers("b"))
    assert archived.status_code == 200
    before = snapshot(small_disk.users)
    small_disk.remount("ro")
    try:
        for i in range(3):
            response = server.chat("a", f"while read-only {i}")
            assert response.status_code == 503 and error_of(response) == "read_only"
            newcomer = server.chat(f"new{i}", "hello")
            assert newcomer.status_code == 503 and error_of(newcomer) == "read_only"
        # Reads still work: the live dialog, the archives, a subscription.
        dialog = httpx.get(server.url + "/dialog", headers=server.headers("a"))
        assert dialog.status_code == 200, dialog.text
        assert [m["text"] for m in dialog.json()["messages"]] == ["one", "Echo: one"]
        listing = httpx.get(server.url + "/archives", headers=server.headers("b"))
        assert listing.status_code == 200 and len(listing.json()) == 1
        with SSEClient(server.url, mint("a")) as sse:
            assert sse.next("ready").data["messages"] == 2
        assert len(server.wait_log("journal.error")) == 1
    finally:
        small_disk.remount("rw")
    assert snapshot(small_disk.users) == before
    assert server.chat("a", "writable again").status_code == 200
    wait_for(lambda: len(server.log_lines("journal.recovered")) == 1)
    assert "Traceback" not in server.log()


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    done = run_root("chattr", "+i", *map(str, paths))
    if done.returncode != 0:
        unavailable(f"chattr +i failed here: {done.stderr.strip()}")
    try:
        yield
    finally:
        run_root("chattr", "-i", *map(str, paths))


def test_permission_error_for_one_user_leaves_the_others_working(
    make_server: Make, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        unavailable("needs root for chattr +i (root ignores file modes)")
    server = make_server(disconnect_grace="60", echo_delay="0", rate_limit="0")
    accepted: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}

    def chat(user: str, text: str) -> httpx.Response:
        response = server.chat(user, text)
        if response.status_code == 200:
            accepted[user].append((text, response.json()["reply"]["text"]))
        return response

    assert chat("a", "a1").status_code == 200
    assert chat("b", "b1").status_code == 200
    dialogs = server.user_dir("b")
    journal = dialogs / "current.yaml"
    before = journal.read_bytes()
    with immutable(journal, dialogs):
        for i in range(3):
            refused = chat("b", f"b refused {i}")
            assert refused.status_code == 503 and error_of(refused) == "permission"
            assert chat("a", f"a goes on {i}").status_code == 200
        archived = httpx.post(server.url + "/dialog/archive", headers=server.headers("b"))
        assert archived.status_code == 503 and error_of(archived) == "permission"
        assert journal.read_bytes() == before
        [line] = server.wait_log("journal.error")
        assert "kind=permission" in line and "user=b" in line
        assert server.log_lines("journal.recovered") == [], "a's writes do not end b's incident"
    assert chat("b", "b back").status_code == 200
    wait_for(lambda: len(server.log_lines("journal.recovered")) == 1)
    assert "user=b" in server.log_lines("journal.recovered")[0]
    for user in ("a", "b"):
        check_exactly_once(server.data / "users", user, accepted[user])
    assert "Traceback" not in server.log()


def test_full_disk_while_writing_a_redacted_archive_leaves_no_partial_copy(
    make_server: Make, small_disk: SmallDisk
) -> None:
    """With redaction the archive is a new file, written before the journal goes: on a full
    disk that copy fails halfway. No piece of it may stay behind."""
    server = make_server(data=small_disk.data, redact="email", echo_delay="0", rate_limit="0")
    text = "write to me at someone@example.com " + BIG
    response = server.chat("r", text)
    assert response.status_code == 200
    small_disk.fill()
    archived = httpx.post(server.url + "/dialog/archive", headers=server.headers("r"))
    assert archived.status_code == 507 and error_of(archived) == "no_space"
    leftovers = [p.name for p in small_disk.users.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == [], "a half-written archive copy stayed behind"
    small_disk.free()
    archived = httpx.post(server.url + "/dialog/archive", headers=server.headers("r"))
    assert archived.status_code == 200, archived.text
    [archive] = server.archives("r")
    assert "someone@example.com" not in archive.read_text()
    assert not (server.user_dir("r") / "current.yaml").exists()
    assert stray_files(small_disk.data) == []
