"""Test-only crash injection at named steps of a write (``ARCHIVER_FAULT_POINT``).

Crash tests arm a :class:`Fault` that SIGKILLs the process at one named step of a write
(``FAULT_POINTS`` in config.py), so every step between "nothing written" and "committed"
is crashed at on purpose rather than hoped for by killing at random times. Unarmed, each
point costs one ``is None`` (:func:`reach`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from .config import FAULT_POINTS


@dataclass
class Fault:
    """SIGKILL this process the ``nth`` time ``point`` is reached.

    At a ``*.torn`` point only the first ``torn_bytes`` of the write reach the file (half
    of it by default) before the kill: what a power cut in the middle of a write leaves.
    """

    point: str
    nth: int = 1
    torn_bytes: int | None = None
    announce: Callable[[str], None] | None = None  # called just before the kill (a log line)
    hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``<point>[@<nth>][#<bytes>]``, e.g. ``append.torn@3#17``."""
        rest, _, torn = spec.partition("#")
        point, _, nth = rest.partition("@")
        if point not in FAULT_POINTS:
            raise ValueError(f"unknown fault point {point!r}")
        return cls(point, int(nth or 1), int(torn) if torn else None)

    def reached(self, point: str) -> bool:
        if point != self.point:
            return False
        with self._lock:
            self.hits += 1
            return self.hits == self.nth

    def crash(self) -> NoReturn:
        if self.announce is not None:
            self.announce(self.point)
        os.kill(os.getpid(), signal.SIGKILL)
        raise SystemExit(137)  # not reached: SIGKILL cannot be caught

    def tear(self, fd: int, data: bytes, offset: int, step: str) -> None:
        """At an armed ``<step>.torn`` point, write only a prefix of ``data``, then die."""
        if self.reached(f"{step}.torn"):
            cut = self.torn_bytes or len(data) // 2
            os.pwrite(fd, data[: max(1, min(cut, len(data) - 1))], offset)
            self.crash()


def reach(fault: Fault | None, point: str) -> None:
    """A named step of a write: an armed fault for ``point`` kills the process here."""
    if fault is not None and fault.reached(point):
        fault.crash()
