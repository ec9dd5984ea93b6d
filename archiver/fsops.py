"""File-system operations the journal needs and the standard library lacks, or spells at
length: rename without replacing, directory fsync, space reservation, whole writes, one
syncfs(2) for a whole filesystem, and the set of files an ``everysec`` policy still owes
an fsync.

Everything here is synchronous and blocking; callers run it off the event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
_syncfs = getattr(_libc, "syncfs", None)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(
    src: Path, dst: Path, *, link_only: bool = False, linked: Callable[[], None] | None = None
) -> None:
    """Rename ``src`` to ``dst``; raise FileExistsError rather than replace ``dst``.

    ``link_only`` takes the link+unlink fallback, and ``linked`` runs between the two
    (the crash tests' way to reach that step on a filesystem that has renameat2).
    """
    if _renameat2 is not None and not link_only:
        rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(dst))
    # Fallback (e.g. NFS): link is atomic and refuses to replace. A crash between link
    # and unlink leaves current.yaml with two links, which the journal recognizes.
    os.link(src, dst)
    if linked is not None:
        linked()
    os.unlink(src)


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pread_tail(fd: int, size: int, want: int) -> bytes:
    """The last ``want`` bytes of a file of ``size`` bytes (all of it if it is shorter)."""
    start = max(0, size - want)
    return os.pread(fd, size - start, start)


def write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]
        offset += written


def reserve(fd: int, offset: int, length: int) -> None:
    """Reserve disk space before touching the file, so a full disk fails cleanly."""
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # the filesystem cannot reserve; the write itself will tell
        raise


def write_new_synced(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist), write ``data`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path | str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... whichever does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def sync_filesystem(directory: Path) -> None:
    """Make everything written to ``directory``'s filesystem durable, at once.

    One syncfs(2) (Linux) costs what a few fsyncs do; where it is missing, sync(2) does
    the same for every filesystem.
    """
    if _syncfs is None:
        os.sync()
        return
    fd = os.open(directory if directory.is_dir() else ".", os.O_RDONLY)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(directory))
    finally:
        os.close(fd)


class Dirty:
    """Files written since the last :meth:`sync` (the ``everysec`` policy); thread-safe."""

    def __init__(self) -> None:
        self._paths: set[str] = set()
        self._lock = threading.Lock()

    def add(self, path: str) -> None:
        with self._lock:
            self._paths.add(path)

    def sync(self) -> int:
        """fdatasync every file written since the last call; return how many."""
        with self._lock:
            dirty, self._paths = self._paths, set()
        for path in dirty:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
        return len(dirty)
