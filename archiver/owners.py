"""Which process owns a dialog, so start-up recovery never archives a live one.

Several ``archiver serve`` processes may share a data directory. Each holds an exclusive
``flock`` on ``<data>/.instances/<id>.lock`` for its whole life, and records its id in a
user's ``dialogs/.owner`` the first time it writes that user's journal. A dialog is an
orphan when its owner's lock can be taken: the kernel releases a lock when its process
dies, SIGKILL included (and an NFSv4 server when the lease of a dead client expires).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
from pathlib import Path

INSTANCES = ".instances"
OWNER = ".owner"


class Instance:
    def __init__(self, data_dir: Path) -> None:
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.dir = Path(data_dir) / INSTANCES
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{self.id}.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._claimed: set[Path] = set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def claim(self, dialogs_dir: Path) -> None:
        """Record this process as the owner of the dialogs in ``dialogs_dir``."""
        if dialogs_dir in self._claimed:
            return
        tmp = dialogs_dir / f"{OWNER}.{self.id}"
        tmp.write_text(self.id + "\n")
        os.replace(tmp, dialogs_dir / OWNER)
        self._claimed.add(dialogs_dir)

    def orphaned(self, dialogs_dir: Path) -> bool:
        """True if no live process owns the dialog in ``dialogs_dir``."""
        try:
            owner = (dialogs_dir / OWNER).read_text().strip()
        except FileNotFoundError:
            return True
        if owner == self.id:
            return False
        if "/" in owner or owner.startswith("."):
            return True
        return not self._alive(owner)

    def _alive(self, owner: str) -> bool:
        path = self.dir / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # its owner exited cleanly and removed it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()  # a dead instance's leftover
        return False
