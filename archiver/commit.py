"""The commit point of an archive: a trailed journal renamed into ``archived/``.

The rename never replaces a file (renameat2 RENAME_NOREPLACE, or link+unlink), so two
archives of the same second get ``-2``, ``-3``... names. With redaction, a redacted copy
is written beside the archives and renamed into place instead, then the journal removed:
a crash in between leaves both, and repair.py recognizes the copy by its dialog id.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .dialogfile import Summary, redacted_copy
from .errors import JournalError
from .fsops import fsync_dir, fsync_path, rename_noreplace
from .layout import ARCHIVED, archive_names_for, tmp_copy_prefix

if TYPE_CHECKING:
    from .redact import Redactor


@dataclass(frozen=True)
class Archived:
    user: str
    dialog: str
    name: str
    path: Path
    reason: str
    messages: int
    started: str


def archived(user: str, summary: Summary, reason: str, target: Path) -> Archived:
    return Archived(
        user=user,
        dialog=summary.dialog,
        name=target.name,
        path=target,
        reason=reason,
        messages=summary.messages,
        started=summary.started,
    )


@dataclass
class Commit:
    """How this journal commits: its durability, its redactor, its fault points."""

    durable: bool
    fault_point: Callable[[str], None]
    link_only: bool = False  # the crash tests' way to reach the link+unlink fallback
    redactor: Redactor | None = None

    def __call__(self, path: Path, summary: Summary, sync_dirs: bool = True) -> Path:
        """Make ``path`` (current.yaml, trailer written) an archive; return its path."""
        sync_dirs = sync_dirs and self.durable
        if self.redactor is None:
            return self._rename_into_archive(path, path, sync_dirs)
        redacted = redacted_copy(path.read_bytes(), self.redactor)
        tmp = path.parent / ARCHIVED / (tmp_copy_prefix(summary.dialog) + secrets.token_hex(3))
        try:
            tmp.write_bytes(redacted)
            if self.durable:
                fsync_path(tmp)
            self.fault_point("archive.copy_written")
            target = self._rename_into_archive(tmp, path, sync_dirs)
        except (OSError, JournalError):
            # A full disk cuts the copy short: no piece of it stays (the journal, trailer
            # written, is finished by the next operation once the disk has room).
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self.fault_point("archive.copied")
        path.unlink()
        if sync_dirs:
            fsync_dir(path.parent)
        return target

    def _rename_into_archive(self, source: Path, journal: Path, sync_dirs: bool) -> Path:
        archived = journal.parent / ARCHIVED
        names = archive_names_for()
        name = next(names)
        while True:
            target = archived / name
            try:
                rename_noreplace(
                    source,
                    target,
                    link_only=self.link_only,
                    linked=(lambda: self.fault_point("archive.linked")) if self.link_only else None,
                )
            except FileExistsError:
                name = next(names, "")
                if not name:
                    raise JournalError("io", "could not find a free archive name") from None
                continue
            except FileNotFoundError:
                # archived/ is made with the user's directory; a mkdir before every rename
                # cost ~20 us (a shutdown renames 10,000). Only make it if it is gone.
                if archived.is_dir() or not source.exists():
                    raise
                archived.mkdir(exist_ok=True)
                continue
            self.fault_point("archive.renamed")
            if sync_dirs:
                fsync_dir(archived)
                fsync_dir(journal.parent)
            return target
