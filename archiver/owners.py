"""Which process owns a dialog, so one instance never archives another's live dialog.

Several ``archiver serve`` processes may share a data directory. Each holds an exclusive
``flock`` on ``<data>/.instances/<id>.lock`` for its whole life. Every append writes the
appending process's id into the user's ``dialogs/.lock`` (the file whose ``flock``
serializes the user's operations, so the record costs one small ``pwrite`` and is never
stale). An owner is alive while its instance lock is held: the kernel releases a lock
when its process dies, SIGKILL included (an NFSv4 server, when a dead client's lease
expires).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
from pathlib import Path

from .layout import LOCK, instance_lock, instances_dir


class Instance:
    def __init__(self, data_dir: Path) -> None:
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.dir = instances_dir(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = instance_lock(self.dir, self.id)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def alive(self, owner: str) -> bool:
        """Is the instance ``owner`` running (this one included)?"""
        return owner == self.id or alive_in(self.dir, owner)

    def other_live_owner(self, owner: str | None) -> bool:
        """True if ``owner`` is another instance that is running."""
        return owner is not None and owner != self.id and self.alive(owner)

    def alone(self) -> bool:
        """True if no other instance's lock file is in the data directory, so no other
        instance runs (one listing; a dead one's leftover counts as another). Nothing is
        locked to ask: a probe's flock could make an instance starting up fail its own."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return True
        return all(name == self.path.name for name in names if name.endswith(LOCK))


def alive_in(instances: Path, owner: str) -> bool:
    """Is the instance ``owner`` of the data directory whose ``instances_dir`` is
    ``instances`` running? Also for a process that is no instance (``archiver sweep``)."""
    if not owner or "/" in owner or owner.startswith("."):
        return False
    path = instance_lock(instances, owner)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # it exited cleanly and removed its lock file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()  # a dead instance's leftover
    return False
