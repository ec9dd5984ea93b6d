"""The journal: one user's dialog as a locked state machine, on disk.

A user's ``current.yaml`` is *clean* (ends in the commit marker: appendable), *torn* (a
crash cut a write short) or *pending* (a trailer was written, the rename into
``archived/`` not done). Every operation runs under the user's ``fcntl.flock`` on
``dialogs/.lock`` (threads and processes sharing a data directory serialize per user),
first finishes what a crash left (:meth:`CurrentDialogs._finish_crashed` in
current_dialog.py: set a torn tail aside, or complete a pending archive), then does its
work:

* **append** overwrites the marker with ``<entry>...\\n`` in one ``pwrite``; its cost is
  one small read of the tail plus one write, whatever the size of the dialog;
* **archive** overwrites the marker with the ``ended``/``reason`` trailer, fsyncs, and
  renames the file into ``archived/`` without replacing anything (renameat2
  RENAME_NOREPLACE, or link+unlink where the filesystem lacks it), fsyncing both
  directories. The rename is the commit point.

The bytes are :mod:`archiver.dialogfile`'s, the paths :mod:`archiver.layout`'s, the
system calls :mod:`archiver.fsops`'s. This module is synchronous and does blocking I/O;
:mod:`archiver.threads` runs it off the event loop. The inside of the house is told in
ARCHITECTURE.md; the contracts (files, HTTP, SSE) in the README.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import dialogfile as fmt
from . import userlock
from .commit import Archived, archived
from .config import FsyncPolicy
from .current_dialog import CurrentDialogs
from .dialogfile import MARKER, Message, Summary
from .errors import READ_ONLY_ERRNOS, JournalError, journal_error
from .faults import reach
from .fsops import Dirty, fsync_dir, pread_tail, reserve, sync_filesystem, write_all
from .idempotency import KeyIndex, Repeated
from .layout import CURRENT


class NotOwner(Exception):
    """The dialog belongs to another live instance, which will archive it itself."""

    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


class _Unclean(Exception):
    """The one-descriptor way met a journal that needs the general way."""


@dataclass(frozen=True)
class Appended:
    """What an append wrote: the message, the dialog it belongs to, and (if asked for)
    the dialog's last messages, read under the same lock."""

    user: str
    dialog: str
    message: Message
    new_dialog: bool
    history: list[Message] | None = None


class Journal(CurrentDialogs):
    """Synchronous, thread-safe and process-safe access to every user's dialogs.

    Append and archive; what a crash left, damaged journals and the reads of the
    current dialog are :class:`~archiver.current_dialog.CurrentDialogs`'."""

    def __init__(
        self,
        data_dir: Path,
        fsync: FsyncPolicy = "everysec",
        instance: str | None = None,
        alive: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(data_dir, fsync)
        # This process's id, written into a user's .lock by every append (owners.py),
        # and how to tell whether another id is a running process.
        self.instance = instance
        self._owner_bytes = userlock.owner_bytes(instance)
        self.alive = alive
        self._dirty = Dirty()
        # fsync every journal written since the last call (the ``everysec`` policy).
        self.sync_dirty: Callable[[], int] = self._dirty.sync
        # The Idempotency-Keys of each user's recent chats, read from the files lazily.
        self.keys = KeyIndex()

    def _check_owner(self, lock_fd: int) -> None:
        owner = userlock.owner_in(lock_fd)
        if owner and owner != self.instance and self.alive is not None and self.alive(owner):
            raise NotOwner(owner)

    def owner(self, user: str) -> str | None:
        """The id of the process that last appended to the user's dialog, if recorded."""
        return userlock.read_owner(self.layout.dialogs_str(user))

    # -- append -------------------------------------------------------------------------

    def append(
        self,
        user: str,
        role: str,
        text: str,
        *,
        interrupted: bool = False,
        history: int = 0,
        key: str | None = None,
        upstream: str | None = None,
        first_token_ms: int | None = None,
    ) -> Appended:
        """Append one message to the user's current dialog, starting one if needed; with
        ``history``, also return the dialog's last ``history`` messages (this one too).
        ``upstream`` and ``first_token_ms`` are recorded in the entry as given.

        With ``key`` (a user message's Idempotency-Key), raise
        :class:`~archiver.idempotency.Repeated` instead if the user sent that key before,
        in this dialog or a recent archive: checked under the same lock as the write."""
        if role not in fmt.ROLES:
            raise ValueError(f"unknown role {role!r}")
        with self._locked(user, create=True) as held:
            assert held is not None
            directory, lock_fd = held
            path = os.path.join(directory, CURRENT)
            # seq and at are decided under the lock, from the journal and the clock.
            draft = Message(0, role, "", text, interrupted, key, upstream, first_token_ms)
            try:
                appended = self._append_locked(user, path, draft, history)
            except JournalError as exc:
                if exc.kind != "corrupt":
                    raise
                # Damaged beyond repair: move it aside, and go on in a fresh dialog at once.
                self._set_aside(user, Path(path), exc.detail)
                appended = self._append_locked(user, path, draft, history)
            userlock.record_owner(lock_fd, self._owner_bytes)
            return appended

    def _append_locked(self, user: str, path: str, draft: Message, history: int) -> Appended:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise journal_error(exc, "opening the journal") from exc
        try:
            size = os.fstat(fd).st_size
            tail = pread_tail(fd, size, fmt.TAIL_READ) if size else b""
            if size and fmt.tail_state(tail) != "clean":
                # A crash left it torn or half-archived: finish that, then start over.
                os.close(fd)
                fd = -1
                self._finish_crashed(user, Path(path))
                return self._append_locked(user, path, draft, history)
            now = time.time()
            if size == 0:
                dialog, seq, offset = fmt.new_dialog_id(now), 1, 0
            else:
                dialog = fmt.dialog_id_of(fd)
                seq = fmt.last_seq(fd, size, tail) + 1
                offset = size - len(MARKER)
            if draft.key is not None:
                archived = self.layout.archived_dir(user)
                found = self.keys.lookup(
                    user, fd, size, dialog if size else None, draft.key, archived
                )
                if found is not None:
                    if size == 0:  # opened with O_CREAT: leave no empty journal behind
                        with contextlib.suppress(OSError):
                            os.unlink(path)
                    raise Repeated(found)
            message = dataclasses.replace(draft, seq=seq, at=fmt.utc_stamp(now))
            body = fmt.message_text(message).encode("utf-8")
            if size == 0:
                body = fmt.header_text(user, dialog, message.at).encode("utf-8") + body
            try:
                self._write(fd, body + MARKER, offset, size, "append")
            except JournalError:
                if size == 0:  # a journal that never got its first entry is not left behind
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise
            reach(self.fault, "append.written")
            self.keys.noted(user, dialog, size, offset + len(body) + len(MARKER), message)
            self._after_write(fd, path, new_file=size == 0)
            last = _history(fd, offset + len(body) + len(MARKER), history)
            return Appended(user, dialog, message, new_dialog=size == 0, history=last)
        finally:
            if fd >= 0:
                os.close(fd)

    def _write(self, fd: int, data: bytes, offset: int, old_size: int, step: str) -> None:
        try:
            reserve(fd, offset, len(data))
            if self.fault is not None:
                reach(self.fault, f"{step}.reserved")
                self.fault.tear(fd, data, offset, step)
            write_all(fd, data, offset)
        except OSError as exc:
            _restore(fd, old_size)
            raise journal_error(exc, "appending to the journal") from exc

    def _after_write(self, fd: int, path: str, new_file: bool) -> None:
        if self.fsync == "always":
            try:
                os.fdatasync(fd)
                if new_file:
                    fsync_dir(os.path.dirname(path))
            except OSError as exc:
                raise journal_error(exc, "syncing the journal") from exc
        elif self.fsync == "everysec":
            self._dirty.add(path)

    def sync_filesystem(self) -> None:
        """Make everything written to the data directory durable at once (one syncfs(2)):
        a shutdown's two passes call it instead of three fsyncs per archive."""
        if self.fsync != "no":
            sync_filesystem(self.layout.users_dir)

    # -- archive ------------------------------------------------------------------------

    def archive(
        self,
        user: str,
        reason: str,
        *,
        dialog: str | None = None,
        idle_for: float | None = None,
        owned: bool = False,
    ) -> Archived | None:
        """Move the user's current dialog into ``archived/``; None if there is none.

        With ``dialog``, archive only if the current dialog is still that one; with
        ``idle_for``, only if the journal has not been written for that many seconds;
        with ``owned``, raise :class:`NotOwner` if another live process appended last.
        All re-check, under the lock, what the caller decided on without it.
        """
        if reason not in fmt.REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        with self._locked(user, create=False) as held:
            if held is None:
                return None
            if owned:
                self._check_owner(held[1])
            path = Path(held[0]) / CURRENT
            sync = self.fsync != "no"
            found = self._trail(user, path, reason, dialog, idle_for, sync)
            if not isinstance(found, Summary):
                return found
            try:
                target = self._commit(path, found)
            except OSError as exc:
                raise journal_error(exc, "archiving the dialog") from exc
            return archived(user, found, reason, target)

    def write_trailer(
        self, user: str, reason: str, *, owned: bool = False
    ) -> Summary | Archived | None:
        """First pass of archiving many dialogs at once: write the trailer (no fsync) and
        return the Summary for move_to_archive(); or None (nothing to archive), or the
        Archived a crash left half done and this finished.

        A shutdown archives 10,000 dialogs with two syncfs(2) instead of 30,000 fsyncs:
        every trailer, one sync_filesystem(), every rename, one more. Each dialog's bytes
        are durable before its rename is issued; a crash between the passes leaves
        journals ending in a trailer, which the next operation finishes, reason and all.
        """
        if reason not in fmt.REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        with self._locked(user, create=False) as held:
            if held is None:
                return None
            if owned:
                self._check_owner(held[1])
            found = self._trail(user, Path(held[0]) / CURRENT, reason, None, None, sync=False)
            if isinstance(found, Summary):
                return dataclasses.replace(found, reason=reason)
            return found

    def archive_group(
        self, group: list[tuple[str, str, bool]]
    ) -> list[Archived | NotOwner | JournalError | None]:
        """Archive each ``(user, reason, owned)`` as :meth:`archive` would, the fsyncs
        shared: every trailer, one sync_filesystem(), every rename, one more.

        Disconnects that come together (GroupCommit in archiving.py) take this way: 200
        archives queued on 600 fsyncs otherwise. Each user's flock is held from its
        trailer to its rename, so nothing needs checking again in between; the flocks are
        taken in user order, so two processes archiving overlapping groups cannot
        deadlock. If a sync fails, the outcomes it left not durable are that error (a
        trailer not durable is not renamed: the next operation finishes the journal).
        """
        outcomes: list[Archived | NotOwner | JournalError | None] = [None] * len(group)
        trailed: list[tuple[int, Path, Summary]] = []
        with contextlib.ExitStack() as held:
            for i in sorted(range(len(group)), key=lambda i: group[i][0]):
                user, reason, owned = group[i]
                try:
                    found = _trail_held(self, held, user, reason, owned)
                except (NotOwner, JournalError) as exc:
                    outcomes[i] = exc
                    continue
                if isinstance(found, tuple):
                    trailed.append((i, *found))
                else:
                    outcomes[i] = found
            if not _group_synced(self, [i for i, _, _ in trailed], outcomes, "the trailers"):
                return outcomes
            for i, path, summary in trailed:
                user, reason, _ = group[i]
                try:
                    target = self._commit(path, summary, sync_dirs=False)
                except OSError as exc:
                    outcomes[i] = journal_error(exc, "archiving the dialog")
                except JournalError as exc:
                    outcomes[i] = exc
                else:
                    outcomes[i] = archived(user, summary, reason, target)
            done = [i for i, o in enumerate(outcomes) if isinstance(o, Archived)]
            _group_synced(self, done, outcomes, "the archives")
        return outcomes

    def move_to_archive(self, user: str, trailed: Summary) -> Archived | None:
        """Second pass, after sync_filesystem(): rename the trailed dialog into archived/
        (directories not fsynced: sync_filesystem() again). None if another process
        finished it in between (it found the trailer, as after a crash)."""
        with self._locked(user, create=False) as held:
            if held is None:
                return None
            path = Path(held[0]) / CURRENT
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            try:
                tail = pread_tail(fd, os.fstat(fd).st_size, 256)
                head = os.pread(fd, 2048, 0)
            finally:
                os.close(fd)
            trailer = fmt.trailer_in(tail)
            if fmt.tail_state(tail) != "pending" or fmt.dialog_id_in(head) != trailed.dialog:
                return None
            assert trailer is not None
            try:
                target = self._commit(path, trailed, sync_dirs=False)
            except OSError as exc:
                raise journal_error(exc, "archiving the dialog") from exc
            return archived(user, trailed, trailer[1], target)

    def _trail(
        self,
        user: str,
        path: Path,
        reason: str,
        dialog: str | None,
        idle_for: float | None,
        sync: bool,
    ) -> Summary | Archived | None:
        """Under the lock: write the trailer if the dialog is to be archived, and return
        its Summary; or None, or the Archived that finishing a crashed archive made."""
        try:
            return self._trail_clean(path, reason, dialog, idle_for, sync)
        except _Unclean:
            pass  # torn, half archived, read-only, or a last message longer than the tail
        except OSError as exc:
            raise journal_error(exc, "archiving the dialog") from exc
        found = self._archivable(user, path, dialog, idle_for)
        if not isinstance(found, Summary):
            return found
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                self._write(fd, fmt.trailer_bytes(reason), size - len(MARKER), size, "archive")
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise journal_error(exc, "archiving the dialog") from exc
        reach(self.fault, "archive.trailed")
        return found

    def _trail_clean(
        self, path: Path, reason: str, dialog: str | None, idle_for: float | None, sync: bool
    ) -> Summary | None:
        """_trail for a clean journal, through one descriptor (the usual case); None if
        there is nothing to archive; _Unclean if it needs the general way."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in READ_ONLY_ERRNOS:
                raise _Unclean() from None  # the general way reports it (or idles)
            raise
        try:
            found = _clean_summary(fd, dialog, idle_for)
            if found is not None:
                size = os.fstat(fd).st_size
                self._write(fd, fmt.trailer_bytes(reason), size - len(MARKER), size, "archive")
                if sync:
                    os.fsync(fd)
        finally:
            os.close(fd)
        if found is not None:
            reach(self.fault, "archive.trailed")
        return found

    def _archivable(
        self, user: str, path: Path, dialog: str | None, idle_for: float | None
    ) -> Summary | Archived | None:
        """Under the lock, the general way: finish what a crash left, then the Summary of
        the dialog to archive (None if there is none, or it is not idle, or not ``dialog``)."""
        try:
            # Before any repair: setting a torn tail aside rewrites the file, and would
            # make a long-idle dialog look freshly written.
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        finished = self._finish_crashed(user, path)
        if isinstance(finished, Archived) and (dialog is None or finished.dialog == dialog):
            return finished
        if not path.exists():
            return None
        if idle_for is not None and time.time() - mtime < idle_for:
            return None
        # The general way is for journals a crash or a hand touched: read it whole, once,
        # so a damaged one is moved aside and never becomes an archive no loader reads.
        try:
            summary = fmt.read_summary(path)
            loaded = fmt.parse_dialog(path.read_bytes())
            if not loaded.messages or loaded.dialog != summary.dialog:
                raise JournalError("corrupt", "the journal holds no readable message")
        except JournalError as exc:
            if exc.kind != "corrupt":
                raise
            self._set_aside(user, path, exc.detail)
            return None
        if dialog is not None and summary.dialog != dialog:
            return None
        return summary


def _trail_held(
    journal: Journal, held: contextlib.ExitStack, user: str, reason: str, owned: bool
) -> tuple[Path, Summary] | Archived | None:
    """archive_group's first pass for one user: take their flock (kept in ``held``),
    write the trailer; the journal and its Summary, or what there was instead."""
    if reason not in fmt.REASONS:
        raise ValueError(f"unknown reason {reason!r}")
    try:
        lock = held.enter_context(journal._locked(user, create=False))
    except OSError as exc:
        raise journal_error(exc, "locking the dialog") from exc
    if lock is None:
        return None
    if owned:
        journal._check_owner(lock[1])
    path = Path(lock[0]) / CURRENT
    found = journal._trail(user, path, reason, None, None, sync=False)
    return (path, found) if isinstance(found, Summary) else found


def _group_synced(
    journal: Journal,
    indexes: list[int],
    outcomes: list[Archived | NotOwner | JournalError | None],
    what: str,
) -> bool:
    """One sync_filesystem(); if it fails, the outcomes at ``indexes`` become the error."""
    try:
        journal.sync_filesystem()
    except OSError as exc:
        error = journal_error(exc, f"syncing {what}")
        for i in indexes:
            outcomes[i] = error
        return False
    return True


def _history(fd: int, size: int, count: int) -> list[Message] | None:
    if count <= 0:
        return None
    found = fmt.tail_messages(fd, size, count)
    if found is None:  # not in our shape: read it all
        found = fmt.parse_dialog(os.pread(fd, size, 0)).messages[-count:]
    return found


def _restore(fd: int, old_size: int) -> None:
    """Undo a failed write: cut back to the old size and put the marker back."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, old_size)
        if old_size >= len(MARKER):
            os.pwrite(fd, MARKER, old_size - len(MARKER))


def _clean_summary(fd: int, dialog: str | None, idle_for: float | None) -> Summary | None:
    """The Summary of a clean journal to archive; None if it is not idle or not
    ``dialog``; _Unclean if it is torn, pending, or its last entry is past the tail."""
    st = os.fstat(fd)
    tail = pread_tail(fd, st.st_size, fmt.TAIL_READ)
    try:
        last = fmt.last_seq_and_at(tail)
    except ValueError:
        raise _Unclean() from None
    if last is None or fmt.tail_state(tail) != "clean":
        raise _Unclean()
    if idle_for is not None and time.time() - st.st_mtime < idle_for:
        return None
    top = fmt.parse_head(os.pread(fd, fmt.HEAD_READ, 0))
    if dialog is not None and top.get("dialog") != dialog:
        return None
    return Summary(
        user=top.get("user", ""),
        dialog=top.get("dialog", ""),
        started=top.get("started", ""),
        messages=last[0],
        last_at=last[1],
    )
