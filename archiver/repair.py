"""Finishing what a crash left in a journal: a torn tail, or an archive half done.

A journal that does not end in the commit marker was torn mid-write: the bytes of that
last write are moved to a side file (``current.yaml.torn-<time>``) and the journal is cut
back to its last complete entry, so every acknowledged entry is kept and nothing is
silently dropped. A journal that ends in a trailer was caught between the trailer and
the rename: the rename is finished, exactly once (a link left by the link+unlink fallback,
or a redacted copy already in place, is recognized).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .commit import Archived, archived
from .dialogfile import HEAD_READ, MARKER, TAIL_OK, Summary, parse_head, read_summary, torn_boundary
from .fsops import free_name, fsync_dir, write_new_synced
from .layout import ARCHIVED, archive_names_in, damaged_side_name, tmp_copy_prefix, torn_side_name


@dataclass(frozen=True)
class Repaired:
    user: str
    side_file: Path | None
    torn_bytes: int


@dataclass(frozen=True)
class Damaged:
    """A journal damaged beyond repair (no crash of ours leaves it so), moved aside."""

    user: str
    side_file: Path
    reason: str


def set_aside_damaged(path: Path, user: str, reason: str) -> Damaged:
    """Move ``path`` to ``current.yaml.damaged-<time>`` (never deleted), so the user goes
    on in a fresh dialog and an operator can look at it; it is never archived."""
    side = free_name(path.with_name(damaged_side_name()))
    os.rename(path, side)  # free_name found a name nobody holds; we hold the user's lock
    fsync_dir(path.parent)
    return Damaged(user=user, side_file=side, reason=reason)


def cut_torn_tail(fd: int, path: Path, user: str, fault_point: Callable[[str], None]) -> Repaired:
    data = os.pread(fd, os.fstat(fd).st_size, 0)
    # A crash after reserving space but before writing leaves zeros past the marker.
    data_end = len(data.rstrip(b"\0"))
    whole = data[:data_end]
    keep = data_end if whole.endswith(TAIL_OK) else torn_boundary(whole)
    torn = data[keep:data_end]  # not the zeros reserved past it
    side: Path | None = None
    if torn:
        side = free_name(path.with_name(torn_side_name()))
        write_new_synced(side, torn)  # kept before the journal is cut
    fault_point("repair.aside")
    if keep == 0:
        path.unlink()
    elif keep == data_end:
        os.ftruncate(fd, keep)  # only zeros were past the marker
    else:
        # Cut to the torn write's first four bytes, then overwrite them with the marker.
        # A crash between the two leaves a journal that ends in the start of that write
        # (a line at column 0), which the next repair sets aside again. Cutting to the
        # last whole entry first would leave a journal without a marker whose last,
        # whole, acknowledged entry the next repair would take for torn.
        os.ftruncate(fd, keep + len(MARKER))
        os.fsync(fd)
        fault_point("repair.cut")
        os.pwrite(fd, MARKER, keep)
        os.fsync(fd)
    fsync_dir(path.parent)
    return Repaired(user=user, side_file=side, torn_bytes=len(torn))


def finish_archive(
    path: Path, user: str, nlink: int, commit: Callable[[Path, Summary], Path]
) -> Archived:
    """A crash hit between the trailer and the commit: complete it, exactly once."""
    summary = read_summary(path)
    archived_dir = path.parent / ARCHIVED
    done = _archived_copy_of(archived_dir, summary.dialog)
    # A redacted copy that never reached its name: the commit below writes a new one.
    for stale in archived_dir.glob(glob.escape(tmp_copy_prefix(summary.dialog)) + "*"):
        stale.unlink(missing_ok=True)
    if nlink > 1 or done is not None:
        # The archive exists (a link, or a redacted copy): only the unlink is missing.
        path.unlink()
        fsync_dir(path.parent)
        target = done if done is not None else archived_dir
    else:
        target = commit(path, summary)
    return archived(user, summary, summary.reason or "recovery", target)


def _archived_copy_of(archived_dir: Path, dialog: str) -> Path | None:
    """The newest archives' file holding ``dialog``, if a crash left both behind."""
    for name in archive_names_in(archived_dir)[:5]:
        with open(archived_dir / name, "rb") as fh:
            if parse_head(fh.read(HEAD_READ)).get("dialog") == dialog:
                return archived_dir / name
    return None
