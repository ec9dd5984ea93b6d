"""Each user's current dialog, under their lock, made clean before it is used.

What every journal operation does first, and the reads of the current dialog:

* **what a crash left** is finished (:meth:`CurrentDialogs._finish_crashed`): a torn tail
  is set aside, a pending archive (trailer written, rename owed) is completed;
* **a journal damaged beyond repair** (in a way no crash of ours leaves) is moved aside
  (:meth:`CurrentDialogs._set_aside`) and the user starts a fresh dialog;
* **the reads**: the current dialog's summary, its last messages, the whole dialog.

:class:`archiver.journal.Journal` builds on this with append and archive.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from . import dialogfile as fmt
from . import userlock
from .commit import Archived, Commit
from .config import FsyncPolicy
from .dialogfile import Dialog, Message, Summary
from .errors import JournalError, journal_error
from .faults import Fault, reach
from .fsops import pread_tail
from .layout import CURRENT, Layout
from .repair import Damaged, Repaired, cut_torn_tail, finish_archive, set_aside_damaged

if TYPE_CHECKING:
    from .redact import Redactor

_Found = TypeVar("_Found", Archived, Repaired, Damaged)


class CurrentDialogs:
    """The users' current dialogs under their locks: repaired, set aside, read."""

    def __init__(self, data_dir: Path, fsync: FsyncPolicy = "everysec") -> None:
        self.layout = Layout(data_dir)
        self.redactor: Redactor | None = None  # applied to the archive copy, not the journal
        self.fsync = fsync
        # Called (from a worker thread) with what a crash left behind and we repaired or
        # finished, so the caller can log it.
        self.observer: Callable[[Archived | Repaired | Damaged], None] | None = None
        self.fault: Fault | None = None  # test-only crash injection

    def _observed(self, what: _Found) -> _Found:
        if self.observer is not None:
            self.observer(what)
        return what

    @contextlib.contextmanager
    def locked(self, user: str, create: bool) -> Iterator[Path | None]:
        """Hold the user's cross-process lock; yield the dialogs dir (None if absent)."""
        with self._locked(user, create) as held:
            yield None if held is None else Path(held[0])

    @contextlib.contextmanager
    def _locked(self, user: str, create: bool) -> Iterator[tuple[str, int] | None]:
        directory = self.layout.dialogs_str(user)
        with userlock.hold(directory, create) as fd:
            yield None if fd is None else (directory, fd)

    def _commit(self, path: Path, summary: Summary, sync_dirs: bool = True) -> Path:
        """The commit point: current.yaml (trailer written) becomes an archive."""
        link_only = self.fault is not None and self.fault.point == "archive.linked"
        commit = Commit(self.fsync != "no", partial(reach, self.fault), link_only, self.redactor)
        return commit(path, summary, sync_dirs)

    # -- what a crash or a hand left ----------------------------------------------------

    def _set_aside(self, user: str, path: Path, reason: str) -> Damaged | None:
        try:
            return self._observed(set_aside_damaged(path, user, reason))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise journal_error(exc, "moving a damaged journal aside") from exc

    def finish_crashed(self, user: str) -> Archived | Repaired | None:
        """Repair or finish the user's journal if a crash left it torn or half-archived."""
        with self.locked(user, create=False) as directory:
            if directory is None:
                return None
            return self._finish_crashed(user, directory / CURRENT)

    def _finish_crashed(self, user: str, path: Path) -> Archived | Repaired | None:
        """Make ``path`` a clean journal: cut a torn tail, finish a pending archive.

        Called under the user's lock before every operation; costs one open and one small
        read when all is well.
        """
        try:
            # Read-only until a repair is needed, so a read-only data directory stays readable.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise journal_error(exc, "opening the journal") from exc
        try:
            st = os.fstat(fd)
            state = fmt.tail_state(pread_tail(fd, st.st_size, 256))
            if state == "clean":
                return None
            try:
                if state == "pending":
                    return self._observed(finish_archive(path, user, st.st_nlink, self._commit))
                rw = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    return self._observed(cut_torn_tail(rw, path, user, partial(reach, self.fault)))
                finally:
                    os.close(rw)
            except OSError as exc:
                raise journal_error(exc, "repairing the journal") from exc
        finally:
            os.close(fd)

    # -- reading the current dialog -----------------------------------------------------

    @contextlib.contextmanager
    def _current(self, user: str) -> Iterator[Path | None]:
        """Under the user's lock, the current dialog (what a crash left finished first);
        None if the user has no dialogs directory."""
        with self.locked(user, create=False) as directory:
            if directory is None:
                yield None
                return
            path = directory / CURRENT
            self._finish_crashed(user, path)
            yield path

    def current_summary(self, user: str) -> Summary | None:
        """The current dialog's id and message count, from the ends of the file."""
        with self._current(user) as path:
            if path is None or not path.exists():
                return None
            try:
                return fmt.read_summary(path)
            except JournalError as exc:
                if exc.kind != "corrupt":
                    raise
                self._set_aside(user, path, exc.detail)
                return None

    def tail_messages(self, user: str, count: int) -> list[Message]:
        """The last ``count`` messages of the current dialog, read from the end of the file."""
        with self._current(user) as path:
            if path is None:
                return []
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return []
            try:
                found = fmt.tail_messages(fd, os.fstat(fd).st_size, count)
            finally:
                os.close(fd)
        if found is None:
            dialog = self.load_current(user)
            return [] if dialog is None else dialog.messages[-count:]
        return found

    def load_current(self, user: str) -> Dialog | None:
        with self._current(user) as path:
            if path is None:
                return None
            try:
                return fmt.parse_dialog(path.read_bytes())
            except FileNotFoundError:
                return None
            except JournalError as exc:
                if exc.kind != "corrupt":
                    raise
                self._set_aside(user, path, exc.detail)
                return None
