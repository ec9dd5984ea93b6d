"""The journal's one error type, and how an OSError becomes one.

``kind`` names what went wrong in words a log and an HTTP status can both use; the
status each kind maps to is decided in httpkit.py (``ERROR_STATUS``), nowhere else.
"""

from __future__ import annotations

import errno
import os

READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class JournalError(Exception):
    """A journal operation failed; ``kind`` says how, for the HTTP status and the log."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # "no_space" | "read_only" | "permission" | "io" | "corrupt"
        self.detail = detail


def journal_error(exc: OSError, what: str) -> JournalError:
    """The JournalError for an OSError met while doing ``what``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return JournalError("no_space", f"the disk is full: {what} could not be written")
    if exc.errno == errno.EROFS:
        return JournalError("read_only", f"the data directory is read-only: {what} failed")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return JournalError("permission", f"permission denied: {what} failed")
    return JournalError("io", f"{what} failed: {os.strerror(exc.errno or errno.EIO)}")
