"""Disk trouble is logged once per incident, not once per request.

A full disk fails every chat of every user until space returns; a journal that may not be
written fails every chat of that one user. Logging each failure would bury the log in one
line per request (the requests themselves are still logged, as ``request.rejected``).
Instead the first failure of an incident logs ``journal.error`` and the first write that
succeeds afterwards logs ``journal.recovered``, with how many operations failed between.

An incident is shared by every user for trouble of the filesystem (``no_space``,
``read_only``, ``io``: any user's successful write ends it) and belongs to one user for
trouble of that user's files (``permission``, ``corrupt``: only that user's write ends it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .errors import JournalError
from .logs import log

SHARED_KINDS = frozenset({"no_space", "read_only", "io"})


@dataclass
class _Incident:
    kind: str
    user: str | None  # None: the whole data directory
    started: float
    failures: int = 1


@dataclass
class Incidents:
    _open: dict[tuple[str, str | None], _Incident] = field(default_factory=dict)

    def failed(self, user: str | None, op: str, exc: JournalError) -> None:
        """A journal operation failed: log it if it starts an incident."""
        owner = None if exc.kind in SHARED_KINDS else user
        incident = self._open.get((exc.kind, owner))
        if incident is not None:
            incident.failures += 1
            return
        self._open[(exc.kind, owner)] = _Incident(exc.kind, owner, time.monotonic())
        log.error("journal.error", kind=exc.kind, user=user, op=op, detail=exc.detail)

    def succeeded(self, user: str | None) -> None:
        """A write went through: the incidents it proves over are logged as recovered."""
        if not self._open:
            return
        for key, incident in list(self._open.items()):
            if incident.user is None or incident.user == user:
                del self._open[key]
                log.info(
                    "journal.recovered",
                    kind=incident.kind,
                    user=incident.user,
                    failures=incident.failures,
                    seconds=round(time.monotonic() - incident.started, 1),
                )
