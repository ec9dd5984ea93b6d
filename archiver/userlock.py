"""The user's lock: an ``fcntl.flock`` on ``dialogs/.lock``, and the owner id kept in it.

Every journal operation holds it, so threads and processes sharing a data directory
serialize per user. Every append also writes the appending process's id into the first
``OWNER_BYTES`` of the file (owners.py tells whether that process still runs): under the
lock, so the record is never stale, and space-padded, so a rewrite is one ``pwrite``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from .errors import READ_ONLY_ERRNOS, journal_error
from .layout import ARCHIVED, LOCK

OWNER_BYTES = 128


@contextlib.contextmanager
def hold(directory: str, create: bool) -> Iterator[int | None]:
    """Hold the flock of the dialogs directory ``directory``; yield its descriptor, or
    None if the directory does not exist and ``create`` is false."""
    lock = os.path.join(directory, LOCK)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        if not create:
            yield None
            return
        fd = _create_dirs(directory)
    except OSError as exc:
        if create or exc.errno not in READ_ONLY_ERRNOS:
            raise journal_error(exc, "opening the user's lock file") from exc
        # A read-only data directory can still be read: flock works on a read-only fd,
        # and whatever then tries to write fails with its own, clear error.
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield None
            return
        except OSError as again:
            raise journal_error(again, "opening the user's lock file") from again
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the flock


def _create_dirs(directory: str) -> int:
    try:
        os.makedirs(os.path.join(directory, ARCHIVED), exist_ok=True)
        return os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise journal_error(exc, "creating the user's directory") from exc


def owner_bytes(instance: str | None) -> bytes | None:
    return None if instance is None else instance.encode().ljust(OWNER_BYTES)


def record_owner(lock_fd: int, owner: bytes | None) -> None:
    """Record ``owner`` (from :func:`owner_bytes`) as the dialog's, if it is not already."""
    if owner is not None and os.pread(lock_fd, OWNER_BYTES, 0) != owner:
        os.pwrite(lock_fd, owner, 0)


def owner_in(lock_fd: int) -> str:
    return os.pread(lock_fd, OWNER_BYTES, 0).decode("utf-8", "replace").strip()


def read_owner(directory: str) -> str | None:
    """The owner recorded in the dialogs directory ``directory``, without the lock."""
    try:
        with open(os.path.join(directory, LOCK), "rb") as fh:
            return fh.read(OWNER_BYTES).decode("utf-8", "replace").strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None
