"""The on-disk store: per-user journals (``current.yaml``) and their archives.

Layout (see DESIGN.md)::

    <data>/users/<user-dir>/dialogs/current.yaml
    <data>/users/<user-dir>/dialogs/archived/2026-11-21-10-30-00.yaml
    <data>/users/<user-dir>/dialogs/archived/2026-11-21-10-30-00-2.yaml
    <data>/users/<user-dir>/dialogs/.lock

**The commit marker.** A journal always ends with the YAML document-end line ``...``.
An append overwrites those four bytes with ``<entry>...\\n`` in one ``pwrite``, so the
file is at all times a complete YAML document, and a file that does *not* end with
``\\n...\\n`` was torn by a crash mid-write: the bytes of that last write are moved to a
side file (``current.yaml.torn-<time>``) and the journal is cut back to its last
complete entry. Without the marker a cut inside a multi-line message would still parse,
silently truncated. An append costs one small read of the tail plus one write, whatever
the size of the dialog.

**Archive.** Under the user's lock: overwrite the marker with the ``ended``/``reason``
trailer, fsync, rename into ``archived/`` without replacing anything (renameat2
RENAME_NOREPLACE, or link+unlink where the filesystem lacks it), fsync both directories.
The rename is the commit point. A journal that ends in a trailer was caught between the
two steps by a crash, and the next operation finishes its rename.

**Locks.** ``fcntl.flock`` on ``dialogs/.lock`` around every operation, so threads and
processes sharing a data directory serialize per user. This module is synchronous and
does blocking I/O; :mod:`archiver.store` runs it off the event loop.

**Fault points.** Crash tests arm a :class:`Fault` (``ARCHIVER_FAULT_POINT``, test-only)
that SIGKILLs the process at one named step of a write (``FAULT_POINTS`` in config.py),
so every step between "nothing written" and "committed" is crashed at on purpose rather
than hoped for by killing at random times. Unarmed, each point costs one ``is None``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import glob
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, unquote

from . import yamltext
from .config import FAULT_POINTS, FsyncPolicy

if TYPE_CHECKING:
    from .redact import Redactor

CURRENT = "current.yaml"
ARCHIVED = "archived"
LOCK = ".lock"
MARKER = b"...\n"
TAIL_OK = b"\n...\n"
REASONS = ("disconnect", "timeout", "shutdown", "recovery", "user")
ROLES = ("user", "assistant", "error")
MAX_USER_DIR = 240  # bytes; most filesystems allow 255 per path component
ARCHIVE_NAME = re.compile(r"\A(\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})(?:-([1-9]\d{0,5}))?\.yaml\Z")
_TAIL_READ = 4096
OWNER_BYTES = 128  # the owner id in .lock, space-padded so a rewrite is one pwrite


class JournalError(Exception):
    """A journal operation failed; ``kind`` says how, for the HTTP status and the log."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # "no_space" | "read_only" | "permission" | "io" | "corrupt"
        self.detail = detail


class NotOwner(Exception):
    """The dialog belongs to another live instance, which will archive it itself."""

    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


class _Unclean(Exception):
    """Journal.close's fast path met a journal that needs the general way."""


class BadUserId(ValueError):
    """A user id that cannot be stored (too long once encoded, or empty)."""


@dataclass
class Fault:
    """Test-only crash injection: SIGKILL this process the ``nth`` time ``point`` is reached.

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


# ---------------------------------------------------------------------------------------
# Users and paths


def user_dir_name(user: str) -> str:
    """Map any user id, reversibly, to one safe path component.

    Percent-encoding leaves letters, digits and ``_.-~`` alone and encodes everything
    else, ``/`` and ``%`` included; a leading dot is encoded too, so ``.`` and ``..``
    (and hidden names) cannot occur.
    """
    if not user:
        raise BadUserId("the user id is empty")
    name = quote(user, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name.encode()) > MAX_USER_DIR:
        raise BadUserId(f"the user id is too long ({len(name)} bytes once encoded, max 240)")
    return name


def user_from_dir_name(name: str) -> str:
    return unquote(name)


def utc_stamp(now: float | None = None) -> str:
    """``2026-11-21T10:30:05.420Z``: milliseconds, UTC, always quoted in YAML."""
    now = time.time() if now is None else now
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}Z"


def new_dialog_id(now: float | None = None) -> str:
    now = time.time() if now is None else now
    return "d-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(3)


def archive_sort_key(name: str) -> tuple[str, int]:
    match = ARCHIVE_NAME.match(name)
    if match is None:
        return ("", 0)
    return (match.group(1), int(match.group(2) or 1))


# ---------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class Message:
    seq: int
    role: str
    at: str
    text: str
    interrupted: bool = False

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "role": self.role, "at": self.at}
        out["text"] = self.text
        if self.interrupted:
            out["interrupted"] = True
        return out


@dataclass(frozen=True)
class Appended:
    """What an append wrote: the message, and the dialog it belongs to."""

    user: str
    dialog: str
    message: Message
    new_dialog: bool


@dataclass(frozen=True)
class Dialog:
    user: str
    dialog: str
    started: str
    messages: list[Message]
    ended: str | None = None
    reason: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user, "dialog": self.dialog}
        out["started"] = self.started
        if self.ended is not None:
            out["ended"] = self.ended
            out["reason"] = self.reason
        out["messages"] = [m.as_json() for m in self.messages]
        return out


@dataclass(frozen=True)
class Head:
    """A dialog's header and last message, read from the ends of the file only."""

    user: str
    dialog: str
    started: str
    messages: int
    last_at: str | None
    ended: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ArchiveInfo:
    user: str
    name: str
    dialog: str
    started: str
    ended: str | None
    reason: str | None
    messages: int

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dialog": self.dialog,
            "started": self.started,
            "ended": self.ended,
            "reason": self.reason,
            "messages": self.messages,
        }


@dataclass(frozen=True)
class Archived:
    user: str
    dialog: str
    name: str
    path: Path
    reason: str
    messages: int
    started: str


@dataclass(frozen=True)
class Repaired:
    user: str
    side_file: Path | None
    torn_bytes: int


# ---------------------------------------------------------------------------------------
# Text of the file


def header_text(user: str, dialog: str, started: str) -> str:
    return (
        f"user: {yamltext.inline(user)}\n"
        f"dialog: {yamltext.inline(dialog)}\n"
        f"started: {yamltext.quoted(started)}\n"
        "messages:\n"
    )


def message_text(message: Message) -> str:
    fields = [
        ("seq", str(message.seq)),
        ("role", yamltext.inline(message.role)),
        ("at", yamltext.quoted(message.at)),
        ("text", yamltext.scalar(message.text, 2)),
    ]
    if message.interrupted:
        fields.append(("interrupted", "true"))
    return yamltext.entry_text(fields)


def trailer_text(ended: str, reason: str, redaction: dict[str, int] | None = None) -> str:
    text = f"ended: {yamltext.quoted(ended)}\nreason: {yamltext.inline(reason)}\n"
    if redaction is not None:
        # Which patterns ran, and how many spans each replaced: "email=2, card=0".
        summary = ", ".join(f"{name}={count}" for name, count in redaction.items())
        text += f"redacted: {yamltext.inline(summary or 'none')}\n"
    return text


def message_from_fields(fields: dict[str, str]) -> Message:
    try:
        return Message(
            seq=int(fields["seq"]),
            role=fields["role"],
            at=fields["at"],
            text=fields.get("text", ""),
            interrupted=fields.get("interrupted") == "true",
        )
    except (KeyError, ValueError) as exc:
        raise yamltext.ParseError(f"entry without a valid {exc}") from None


def parse_dialog(data: bytes) -> Dialog:
    """Parse a journal or archive; fall back to ruamel.yaml for a file we did not write."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JournalError("corrupt", f"not UTF-8 text: {exc}") from None
    try:
        top, entries = yamltext.parse_document(text)
        messages = [message_from_fields(e) for e in entries]
    except yamltext.ParseError:
        return _parse_with_ruamel(text)
    return _dialog_from(top, messages)


def _dialog_from(top: dict[str, Any], messages: list[Message]) -> Dialog:
    known = {"user", "dialog", "started", "ended", "reason"}
    return Dialog(
        user=str(top.get("user", "")),
        dialog=str(top.get("dialog", "")),
        started=str(top.get("started", "")),
        messages=messages,
        ended=None if top.get("ended") is None else str(top["ended"]),
        reason=None if top.get("reason") is None else str(top["reason"]),
        extra={k: str(v) for k, v in top.items() if k not in known and k != "messages"},
    )


def _parse_with_ruamel(text: str) -> Dialog:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise JournalError("corrupt", f"not a valid YAML document: {exc}") from None
    if not isinstance(doc, dict):
        raise JournalError("corrupt", "not a dialog document")
    raw = doc.get("messages") or []
    try:
        messages = [
            Message(
                seq=int(m["seq"]),
                role=str(m["role"]),
                at=str(m["at"]),
                text=str(m.get("text", "")),
                interrupted=bool(m.get("interrupted", False)),
            )
            for m in raw
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise JournalError("corrupt", f"a message entry is malformed: {exc}") from None
    return _dialog_from(doc, messages)


_HEAD_LINE = re.compile(rb"^(user|dialog|started): (.*)$", re.M)
_TRAILER = re.compile(rb"\nended: '([^'\n]*)'\nreason: ([^\n]*)\n")

_SEQ = b"\n- seq: "
_AT = b"\n  at: '"


def _last_seq_and_at(tail: bytes) -> tuple[int, str | None] | None:
    """The last ``- seq: N`` (and its ``at``) in ``tail``, or None if the tail holds none.

    Entry lines are the only ones at column 0 that start with ``- ``, so a reverse search
    for the line finds the last entry without scanning the dialog.
    """
    pos = tail.rfind(_SEQ)
    if pos < 0:
        if not tail.startswith(_SEQ[1:]):
            return None
        pos = -1
    start = pos + len(_SEQ)
    end = tail.find(b"\n", start)
    if end < 0:
        return None
    seq = int(tail[start:end])
    at_pos = tail.find(_AT, end)
    at = None
    if at_pos >= 0:
        at_end = tail.find(b"'", at_pos + len(_AT))
        at = tail[at_pos + len(_AT) : at_end].decode() if at_end > 0 else None
    return seq, at


def dialog_id_in(head: bytes) -> str:
    """The ``dialog:`` value of a file that starts with ``head``."""
    start = head.find(b"\ndialog: ")
    end = head.find(b"\n", start + 1)
    if start < 0 or end < 0:
        raise yamltext.ParseError("no dialog id in the header")
    return yamltext.parse_value(head[start + 9 : end].decode("utf-8"), [], 0, 0)[0]


def _parse_head(head: bytes) -> dict[str, str]:
    end = head.find(b"\nmessages:\n")
    region = head if end < 0 else head[:end]
    out = {}
    for match in _HEAD_LINE.finditer(region):
        value = match.group(2).decode("utf-8", "replace")
        out[match.group(1).decode()] = yamltext.parse_value(value, [], 0, 0)[0]
    return out


# ---------------------------------------------------------------------------------------
# Low-level file helpers


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
    # and unlink leaves current.yaml with two links, which _finish_pending recognizes.
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


def _pread_tail(fd: int, size: int, want: int) -> bytes:
    start = max(0, size - want)
    return os.pread(fd, size - start, start)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]
        offset += written


def _reserve(fd: int, offset: int, length: int) -> None:
    """Reserve disk space before touching the file, so a full disk fails cleanly."""
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # the filesystem cannot reserve; the write itself will tell
        raise


_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def _journal_error(exc: OSError, what: str) -> JournalError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return JournalError("no_space", f"the disk is full: {what} could not be written")
    if exc.errno == errno.EROFS:
        return JournalError("read_only", f"the data directory is read-only: {what} failed")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return JournalError("permission", f"permission denied: {what} failed")
    return JournalError("io", f"{what} failed: {os.strerror(exc.errno or errno.EIO)}")


# ---------------------------------------------------------------------------------------
# The journal


class Journal:
    """Synchronous, thread-safe and process-safe access to every user's dialogs."""

    def __init__(
        self,
        data_dir: Path,
        fsync: FsyncPolicy = "everysec",
        instance: str | None = None,
        alive: Callable[[str], bool] | None = None,
    ) -> None:
        self.users_dir = Path(data_dir) / "users"
        # This process's id, written into a user's .lock by every append (owners.py),
        # and how to tell whether another id is a running process.
        self.instance = instance
        self._owner_bytes = None if instance is None else instance.encode().ljust(OWNER_BYTES)
        self.alive = alive
        self.redactor: Redactor | None = None  # applied to the archive copy, not the journal
        self._users_str = str(self.users_dir)
        self.fsync = fsync
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        # Called (from a worker thread) with what a crash left behind and we repaired or
        # finished, so the caller can log it.
        self.observer: Callable[[Archived | Repaired], None] | None = None
        self.fault: Fault | None = None  # test-only crash injection

    def _reach(self, point: str) -> None:
        """A named step of a write: an armed :class:`Fault` kills the process here."""
        if self.fault is not None and self.fault.reached(point):
            self.fault.crash()

    # -- paths --------------------------------------------------------------------------

    def dialogs_dir(self, user: str) -> Path:
        return self.users_dir / user_dir_name(user) / "dialogs"

    def _dialogs_str(self, user: str) -> str:
        # Plain strings on the append path: pathlib objects cost more than the syscalls.
        return os.path.join(self._users_str, user_dir_name(user), "dialogs")

    def current_path(self, user: str) -> Path:
        return self.dialogs_dir(user) / CURRENT

    def archive_path(self, user: str, name: str) -> Path | None:
        """The path of archive ``name``, or None if ``name`` is not an archive name."""
        if ARCHIVE_NAME.match(name) is None:
            return None
        return self.dialogs_dir(user) / ARCHIVED / name

    @contextlib.contextmanager
    def locked(self, user: str, create: bool) -> Iterator[Path | None]:
        """Hold the user's cross-process lock; yield the dialogs dir (None if absent)."""
        with self._locked(user, create) as held:
            yield None if held is None else Path(held[0])

    @contextlib.contextmanager
    def _locked(self, user: str, create: bool) -> Iterator[tuple[str, int] | None]:
        directory = self._dialogs_str(user)
        try:
            fd = os.open(
                os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except FileNotFoundError:
            if not create:
                yield None
                return
            fd = self._create_dirs(directory)
        except OSError as exc:
            if create or exc.errno not in _READ_ONLY_ERRNOS:
                raise _journal_error(exc, "opening the user's lock file") from exc
            # A read-only data directory can still be read: flock works on a read-only fd,
            # and whatever then tries to write fails with its own, clear error.
            try:
                fd = os.open(os.path.join(directory, LOCK), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                yield None
                return
            except OSError as again:
                raise _journal_error(again, "opening the user's lock file") from again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield directory, fd
        finally:
            os.close(fd)  # closing releases the flock

    @staticmethod
    def _create_dirs(directory: str) -> int:
        try:
            os.makedirs(os.path.join(directory, ARCHIVED), exist_ok=True)
            return os.open(
                os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise _journal_error(exc, "creating the user's directory") from exc

    # -- append -------------------------------------------------------------------------

    def append(self, user: str, role: str, text: str, *, interrupted: bool = False) -> Appended:
        """Append one message to the user's current dialog, starting one if needed."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        with self._locked(user, create=True) as held:
            assert held is not None
            directory, lock_fd = held
            appended = self._append_locked(
                user, os.path.join(directory, CURRENT), role, text, interrupted
            )
            self._claim(lock_fd)
            return appended

    def _claim(self, lock_fd: int) -> None:
        """Record this process as the dialog's owner (under the lock, so never stale)."""
        if self._owner_bytes is not None and os.pread(lock_fd, OWNER_BYTES, 0) != self._owner_bytes:
            os.pwrite(lock_fd, self._owner_bytes, 0)

    def owner(self, user: str) -> str | None:
        """The id of the process that last appended to the user's dialog, if recorded."""
        try:
            with open(self.dialogs_dir(user) / LOCK, "rb") as fh:
                return fh.read(OWNER_BYTES).decode("utf-8", "replace").strip() or None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _append_locked(
        self, user: str, path: str, role: str, text: str, interrupted: bool
    ) -> Appended:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _journal_error(exc, "opening the journal") from exc
        try:
            size = os.fstat(fd).st_size
            tail = _pread_tail(fd, size, _TAIL_READ) if size else b""
            if size and (not tail.endswith(TAIL_OK) or _TRAILER.search(tail[-256:])):
                # A crash left it torn or half-archived: settle it, then start over.
                os.close(fd)
                fd = -1
                self._settle(user, Path(path))
                return self._append_locked(user, path, role, text, interrupted)
            now = time.time()
            if size == 0:
                dialog, seq, offset = new_dialog_id(now), 1, 0
            else:
                dialog = self._dialog_id(fd)
                seq = self._last_seq(fd, size, tail) + 1
                offset = size - len(MARKER)
            message = Message(
                seq=seq, role=role, at=utc_stamp(now), text=text, interrupted=interrupted
            )
            body = message_text(message).encode("utf-8")
            if size == 0:
                body = header_text(user, dialog, message.at).encode("utf-8") + body
            try:
                self._write(fd, body + MARKER, offset, size, "append")
            except JournalError:
                if size == 0:  # a journal that never got its first entry is not left behind
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise
            self._reach("append.written")
            self._after_write(fd, path, new_file=size == 0)
            return Appended(user=user, dialog=dialog, message=message, new_dialog=size == 0)
        finally:
            if fd >= 0:
                os.close(fd)

    def _write(self, fd: int, data: bytes, offset: int, old_size: int, step: str) -> None:
        try:
            _reserve(fd, offset, len(data))
            if self.fault is not None:
                self._reach(f"{step}.reserved")
                self._maybe_tear(fd, data, offset, step)
            _write_all(fd, data, offset)
        except OSError as exc:
            self._restore(fd, old_size)
            raise _journal_error(exc, "appending to the journal") from exc

    def _maybe_tear(self, fd: int, data: bytes, offset: int, step: str) -> None:
        """At an armed ``<step>.torn`` point, write only a prefix of ``data``, then die."""
        assert self.fault is not None
        if self.fault.reached(f"{step}.torn"):
            cut = self.fault.torn_bytes or len(data) // 2
            os.pwrite(fd, data[: max(1, min(cut, len(data) - 1))], offset)
            self.fault.crash()

    @staticmethod
    def _restore(fd: int, old_size: int) -> None:
        """Undo a failed write: cut back to the old size and put the marker back."""
        with contextlib.suppress(OSError):
            os.ftruncate(fd, old_size)
            if old_size >= len(MARKER):
                os.pwrite(fd, MARKER, old_size - len(MARKER))

    def _after_write(self, fd: int, path: str, new_file: bool) -> None:
        if self.fsync == "always":
            try:
                os.fdatasync(fd)
                if new_file:
                    fsync_dir(os.path.dirname(path))
            except OSError as exc:
                raise _journal_error(exc, "syncing the journal") from exc
        elif self.fsync == "everysec":
            with self._dirty_lock:
                self._dirty.add(path)

    def sync_filesystem(self) -> None:
        """Make everything written to the data directory's filesystem durable, at once.

        One syncfs(2) (Linux) costs what a few fsyncs do; a shutdown's close()/commit()
        passes call it instead of three fsyncs per archive. Where it is missing, sync(2)
        does the same for every filesystem.
        """
        if self.fsync == "no":
            return
        if _syncfs is None:
            os.sync()
            return
        fd = os.open(self.users_dir if self.users_dir.is_dir() else ".", os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(self.users_dir))
        finally:
            os.close(fd)

    def sync_dirty(self) -> int:
        """fsync every journal written since the last call (the ``everysec`` policy)."""
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        for path in dirty:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
        return len(dirty)

    @staticmethod
    def _dialog_id(fd: int) -> str:
        # The header is a few short lines; the user id line is at most ~1 KB escaped.
        try:
            return dialog_id_in(os.pread(fd, 2048, 0))
        except yamltext.ParseError:
            raise JournalError("corrupt", "the journal has no dialog id in its header") from None

    @staticmethod
    def _last_seq(fd: int, size: int, tail: bytes) -> int:
        want = len(tail)
        while True:
            try:
                found = _last_seq_and_at(tail)
            except ValueError as exc:
                raise JournalError(
                    "corrupt", f"the journal's last entry is damaged ({exc})"[:300]
                ) from None
            if found is not None:
                return found[0]
            if want >= size:
                raise JournalError("corrupt", "the journal has a header but no message")
            want *= 4
            tail = _pread_tail(fd, size, want)

    # -- tail repair and unfinished archives ---------------------------------------------

    def _settle(self, user: str, path: Path) -> Archived | Repaired | None:
        """Make ``path`` a clean journal: repair a torn tail, finish a pending archive.

        Called under the user's lock before every operation; costs one stat and one small
        read when all is well.
        """
        try:
            # Read-only until a repair is needed, so a read-only data directory stays readable.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _journal_error(exc, "opening the journal") from exc
        try:
            st = os.fstat(fd)
            tail = _pread_tail(fd, st.st_size, 256)
            if tail.endswith(TAIL_OK) and _TRAILER.search(tail) is None:
                return None
            try:
                if tail.endswith(TAIL_OK):
                    return self._finish_pending(user, path, st.st_nlink)
                rw = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    return self._repair(rw, path, user)
                finally:
                    os.close(rw)
            except OSError as exc:
                raise _journal_error(exc, "repairing the journal") from exc
        finally:
            os.close(fd)

    def _repair(self, fd: int, path: Path, user: str) -> Repaired:
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        # A crash after reserving space but before writing leaves zeros past the marker.
        data_end = len(data.rstrip(b"\0"))
        keep = data_end if data[:data_end].endswith(TAIL_OK) else torn_boundary(data[:data_end])
        torn = data[keep:data_end]  # not the zeros reserved past it
        side: Path | None = None
        if torn:
            side = _free_name(path.with_name(f"{CURRENT}.torn-{time.strftime('%Y%m%dT%H%M%SZ')}"))
            _write_synced(side, torn)  # kept before the journal is cut
        self._reach("repair.aside")
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
            self._reach("repair.cut")
            os.pwrite(fd, MARKER, keep)
            os.fsync(fd)
        fsync_dir(path.parent)
        repaired = Repaired(user=user, side_file=side, torn_bytes=len(torn))
        if self.observer is not None:
            self.observer(repaired)
        return repaired

    def _finish_pending(self, user: str, path: Path, nlink: int) -> Archived:
        """A crash hit between the trailer and the commit: complete it, exactly once."""
        head = self._read_head_of(path)
        done = self._archived_copy_of(path.parent / ARCHIVED, head.dialog)
        # A redacted copy that never reached its name: the commit below writes a new one.
        for stale in (path.parent / ARCHIVED).glob(f".tmp-{glob.escape(head.dialog)}-*"):
            stale.unlink(missing_ok=True)
        if nlink > 1 or done is not None:
            # The archive exists (a link, or a redacted copy): only the unlink is missing.
            path.unlink()
            fsync_dir(path.parent)
            target = done if done is not None else path.parent / ARCHIVED
        else:
            target = self._commit(path, head)
        finished = Archived(
            user=user,
            dialog=head.dialog,
            name=target.name,
            path=target,
            reason=head.reason or "recovery",
            messages=head.messages,
            started=head.started,
        )
        if self.observer is not None:
            self.observer(finished)
        return finished

    @staticmethod
    def _archived_copy_of(archived: Path, dialog: str) -> Path | None:
        """The newest archives' file holding ``dialog``, if a crash left both behind."""
        try:
            names = [n for n in os.listdir(archived) if ARCHIVE_NAME.match(n)]
        except FileNotFoundError:
            return None
        for name in sorted(names, key=archive_sort_key, reverse=True)[:5]:
            with open(archived / name, "rb") as fh:
                if _parse_head(fh.read(4096)).get("dialog") == dialog:
                    return archived / name
        return None

    # -- archive ------------------------------------------------------------------------

    def archive(
        self,
        user: str,
        reason: str,
        *,
        dialog: str | None = None,
        idle_for: float | None = None,
        owned: bool = False,
    ) -> Archived | None:
        """Move the user's current dialog into ``archived/``; None if there is none.

        With ``dialog``, archive only if the current dialog is still that one; with
        ``idle_for``, only if the journal has not been written for that many seconds;
        with ``owned``, raise :class:`NotOwner` if another live process appended last.
        All re-check, under the lock, what the caller decided on without it.
        """
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        with self._locked(user, create=False) as held:
            found = self._archivable(user, held, dialog, idle_for, owned)
            if not isinstance(found, Head):
                return found
            assert held is not None
            path = Path(held[0]) / CURRENT
            try:
                self._write_trailer(path, reason, sync=self.fsync != "no")
                target = self._commit(path, found)
            except OSError as exc:
                raise _journal_error(exc, "archiving the dialog") from exc
            return _archived(user, found, reason, target)

    # Archiving many dialogs at once (a shutdown) in two passes, so that 10,000 archives
    # cost two syncfs(2) instead of 30,000 fsyncs: close() writes each trailer, one
    # sync_filesystem() makes them all durable, commit() renames each into archived/, and
    # one more sync_filesystem() makes the renames durable. The order a single archive
    # keeps holds for each dialog: its bytes are durable before its rename is issued. A
    # crash between the passes leaves journals that end in a trailer, which the next
    # operation on them (or start-up recovery) finishes, reason and all.

    def close(self, user: str, reason: str, *, owned: bool = False) -> Head | Archived | None:
        """First pass: write the trailer (no fsync) and return the Head to commit() later;
        or None (nothing to archive), or the Archived a crash left half done and this
        finished."""
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        with self._locked(user, create=False) as held:
            if held is None:
                return None
            if owned:
                self._check_owner(held[1])
            path = os.path.join(held[0], CURRENT)
            try:
                return self._close_clean(user, path, reason)
            except _Unclean:
                pass  # torn, half archived, or a last message longer than the tail
            except OSError as exc:
                raise _journal_error(exc, "archiving the dialog") from exc
            found = self._archivable(user, held, None, None, False)
            if not isinstance(found, Head):
                return found
            try:
                self._write_trailer(Path(path), reason, sync=False)
            except OSError as exc:
                raise _journal_error(exc, "archiving the dialog") from exc
            return dataclasses.replace(found, reason=reason)

    def _close_clean(self, user: str, path: str, reason: str) -> Head | None:
        """close() of a clean journal through one descriptor (the usual case; archive()'s
        checks open the file four times); None if there is none; _Unclean otherwise."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            tail = _pread_tail(fd, size, _TAIL_READ)
            last = _last_seq_and_at(tail)
            if last is None or not tail.endswith(TAIL_OK) or _TRAILER.search(tail[-256:]):
                raise _Unclean()
            top = _parse_head(os.pread(fd, 4096, 0))
            trailer = trailer_text(utc_stamp(), reason).encode() + MARKER
            self._write(fd, trailer, size - len(MARKER), size, "archive")
        finally:
            os.close(fd)
        self._reach("archive.trailed")
        return Head(
            user=top.get("user", user),
            dialog=top.get("dialog", ""),
            started=top.get("started", ""),
            messages=last[0],
            last_at=last[1],
            reason=reason,
        )

    def commit(self, user: str, closed: Head) -> Archived | None:
        """Second pass, after sync_filesystem(): rename the closed dialog into archived/
        (directories not fsynced: sync_filesystem() again). None if another process
        finished it in between (it found the trailer, as after a crash)."""
        with self._locked(user, create=False) as held:
            if held is None:
                return None
            path = os.path.join(held[0], CURRENT)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            try:
                tail = _pread_tail(fd, os.fstat(fd).st_size, 256)
                head = os.pread(fd, 2048, 0)
            finally:
                os.close(fd)
            trailer = _TRAILER.search(tail)
            if trailer is None or not tail.endswith(TAIL_OK) or dialog_id_in(head) != closed.dialog:
                return None
            reason = trailer.group(2).decode()
            try:
                target = self._commit(Path(path), closed, sync_dirs=False)
            except OSError as exc:
                raise _journal_error(exc, "archiving the dialog") from exc
            return _archived(user, closed, reason, target)

    def _archivable(
        self,
        user: str,
        held: tuple[str, int] | None,
        dialog: str | None,
        idle_for: float | None,
        owned: bool,
    ) -> Head | Archived | None:
        """Under the lock: the Head of a dialog to archive, or what settling it did."""
        if held is None:
            return None
        directory, lock_fd = held
        if owned:
            self._check_owner(lock_fd)
        path = Path(directory) / CURRENT
        try:
            # Before any repair: setting a torn tail aside rewrites the file, and would
            # make a long-idle dialog look freshly written.
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        settled = self._settle(user, path)
        if isinstance(settled, Archived) and (dialog is None or settled.dialog == dialog):
            return settled
        if not path.exists():
            return None
        if idle_for is not None and time.time() - mtime < idle_for:
            return None
        head = self._read_head_of(path)
        if dialog is not None and head.dialog != dialog:
            return None
        return head

    def _check_owner(self, lock_fd: int) -> None:
        owner = os.pread(lock_fd, OWNER_BYTES, 0).decode("utf-8", "replace").strip()
        if owner and owner != self.instance and self.alive is not None and self.alive(owner):
            raise NotOwner(owner)

    def _write_trailer(self, path: Path, reason: str, sync: bool) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            trailer = trailer_text(utc_stamp(), reason).encode() + MARKER
            self._write(fd, trailer, size - len(MARKER), size, "archive")
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._reach("archive.trailed")

    def _commit(self, path: Path, head: Head, sync_dirs: bool = True) -> Path:
        """The commit point: current.yaml (trailer written) becomes an archive."""
        sync_dirs = sync_dirs and self.fsync != "no"
        if self.redactor is None:
            return self._rename_into_archive(path, path, sync_dirs)
        # Redacted: write a redacted copy beside the archives, rename it into place (the
        # commit point), then remove the journal. A crash in between leaves both, and
        # _finish_pending recognizes the copy by its dialog id.
        redacted = self._redacted(path.read_bytes())
        archived = path.parent / ARCHIVED
        tmp = archived / f".tmp-{head.dialog}-{secrets.token_hex(3)}"
        try:
            tmp.write_bytes(redacted)
            if self.fsync != "no":
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            self._reach("archive.copy_written")
            target = self._rename_into_archive(tmp, path, sync_dirs)
        except (OSError, JournalError):
            # A full disk cuts the copy short: no piece of it stays (the journal, trailer
            # written, is finished by the next operation once the disk has room).
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._reach("archive.copied")
        path.unlink()
        if sync_dirs:
            fsync_dir(path.parent)
        return target

    def _redacted(self, data: bytes) -> bytes:
        assert self.redactor is not None
        dialog = parse_dialog(data)
        totals: dict[str, int] = dict.fromkeys(self.redactor.names, 0)
        parts = [header_text(dialog.user, dialog.dialog, dialog.started)]
        for message in dialog.messages:
            text, found = self.redactor.redact(message.text)
            for name, count in found.items():
                totals[name] += count
            parts.append(message_text(dataclasses.replace(message, text=text)))
        parts.append(trailer_text(dialog.ended or utc_stamp(), dialog.reason or "recovery", totals))
        return "".join(parts).encode("utf-8") + MARKER

    def _rename_into_archive(self, source: Path, journal: Path, sync_dirs: bool) -> Path:
        archived = journal.parent / ARCHIVED
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
        link_only = self.fault is not None and self.fault.point == "archive.linked"
        n = 1
        while n < 10_000:
            target = archived / (f"{stamp}.yaml" if n == 1 else f"{stamp}-{n}.yaml")
            try:
                rename_noreplace(
                    source,
                    target,
                    link_only=link_only,
                    linked=(lambda: self._reach("archive.linked")) if link_only else None,
                )
            except FileExistsError:
                n += 1
                continue
            except FileNotFoundError:
                # archived/ is made with the user's directory; a mkdir before every rename
                # cost ~20 us (a shutdown renames 10,000). Only make it if it is gone.
                if archived.is_dir() or not source.exists():
                    raise
                archived.mkdir(exist_ok=True)
                continue
            self._reach("archive.renamed")
            if sync_dirs:
                fsync_dir(archived)
                fsync_dir(journal.parent)
            return target
        raise JournalError("io", "could not find a free archive name")

    # -- reading ------------------------------------------------------------------------

    def _read_head_of(self, path: Path) -> Head:
        try:
            return self._head_of(path)
        except ValueError as exc:  # a seq that is no number, a header that is no UTF-8, ...
            raise JournalError("corrupt", f"{path.name} is damaged ({exc})"[:300]) from None

    @staticmethod
    def _head_of(path: Path) -> Head:
        with open(path, "rb") as fh:
            head = fh.read(4096)
            size = os.fstat(fh.fileno()).st_size
            found = None
            want = _TAIL_READ
            while found is None:
                tail = _pread_tail(fh.fileno(), size, want)
                found = _last_seq_and_at(tail)
                if want >= size:
                    break
                want *= 4
        top = _parse_head(head)
        trailer = _TRAILER.search(tail)
        return Head(
            user=top.get("user", ""),
            dialog=top.get("dialog", ""),
            started=top.get("started", ""),
            messages=found[0] if found else 0,
            last_at=found[1] if found else None,
            ended=trailer.group(1).decode() if trailer else None,
            reason=trailer.group(2).decode() if trailer else None,
        )

    def current_head(self, user: str) -> Head | None:
        """The current dialog's id and message count, from the ends of the file."""
        with self.locked(user, create=False) as directory:
            if directory is None:
                return None
            path = directory / CURRENT
            self._settle(user, path)
            if not path.exists():
                return None
            return self._read_head_of(path)

    def tail_messages(self, user: str, count: int) -> list[Message]:
        """The last ``count`` messages of the current dialog, read from the end of the file."""
        with self.locked(user, create=False) as directory:
            if directory is None:
                return []
            path = directory / CURRENT
            self._settle(user, path)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return []
            try:
                size = os.fstat(fd).st_size
                want = 16384
                while True:
                    tail = _pread_tail(fd, size, want)
                    starts = [m.start() + 1 for m in re.finditer(re.escape(_SEQ), tail)]
                    if len(starts) > count or want >= size:
                        break
                    want *= 4
            finally:
                os.close(fd)
        if not starts:
            return []
        chunk = tail[starts[-count] if len(starts) >= count else starts[0] :].decode("utf-8")
        try:
            _, entries = yamltext.parse_document(chunk)
            return [message_from_fields(e) for e in entries]
        except yamltext.ParseError:
            dialog = self.load_current(user)
            return [] if dialog is None else dialog.messages[-count:]

    def load_current(self, user: str) -> Dialog | None:
        with self.locked(user, create=False) as directory:
            if directory is None:
                return None
            path = directory / CURRENT
            self._settle(user, path)
            try:
                return parse_dialog(path.read_bytes())
            except FileNotFoundError:
                return None

    def messages_after(self, user: str, dialog: str, seq: int) -> tuple[Dialog | None, str | None]:
        """Messages of ``dialog`` after ``seq``, from current.yaml or its archive.

        Returns (dialog with only those messages, archive name if it was archived).
        """
        current = self.load_current(user)
        if current is not None and current.dialog == dialog:
            return _after(current, seq), None
        for info in self.list_archives(user, limit=20):
            if info.dialog == dialog:
                data = self.read_archive(user, info.name)
                if data is not None:
                    return _after(parse_dialog(data), seq), info.name
        return None, None

    def read_archive(self, user: str, name: str) -> bytes | None:
        path = self.archive_path(user, name)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def archive_info(self, user: str, path: Path) -> ArchiveInfo:
        head = self._read_head_of(path)
        return ArchiveInfo(
            user=user,
            name=path.name,
            dialog=head.dialog,
            started=head.started,
            ended=head.ended,
            reason=head.reason,
            messages=head.messages,
        )

    def archive_names(self, user: str) -> list[str]:
        """The user's archive file names, newest first."""
        try:
            directory = self.dialogs_dir(user) / ARCHIVED
            names = [n for n in os.listdir(directory) if ARCHIVE_NAME.match(n)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(names, key=archive_sort_key, reverse=True)

    def list_archives(self, user: str, limit: int | None = None) -> list[ArchiveInfo]:
        names = self.archive_names(user)
        if limit is not None:
            names = names[:limit]
        directory = self.dialogs_dir(user) / ARCHIVED
        out = []
        for name in names:
            # A damaged archive is left out of the listing (archiver list names it).
            with contextlib.suppress(FileNotFoundError, JournalError):
                out.append(self.archive_info(user, directory / name))
        return out

    def users(self) -> list[str]:
        """Every user with a directory, decoded."""
        try:
            return sorted(user_from_dir_name(n) for n in os.listdir(self.users_dir))
        except FileNotFoundError:
            return []

    def current_mtimes(self) -> Iterator[tuple[str, float]]:
        """(user, mtime of current.yaml) for every user with a current dialog."""
        try:
            entries = os.scandir(self.users_dir)
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                try:
                    st = os.stat(os.path.join(entry.path, "dialogs", CURRENT))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                yield user_from_dir_name(entry.name), st.st_mtime

    def settle(self, user: str) -> Archived | Repaired | None:
        """Repair or finish the user's journal if a crash left it torn or half-archived."""
        with self.locked(user, create=False) as directory:
            if directory is None:
                return None
            return self._settle(user, directory / CURRENT)


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _archived(user: str, head: Head, reason: str, target: Path) -> Archived:
    return Archived(
        user=user,
        dialog=head.dialog,
        name=target.name,
        path=target,
        reason=reason,
        messages=head.messages,
        started=head.started,
    )


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _after(dialog: Dialog, seq: int) -> Dialog:
    return Dialog(
        user=dialog.user,
        dialog=dialog.dialog,
        started=dialog.started,
        messages=[m for m in dialog.messages if m.seq > seq],
        ended=dialog.ended,
        reason=dialog.reason,
    )


def torn_boundary(data: bytes) -> int:
    """How many leading bytes of a torn journal are whole; the rest is the torn write.

    Every write starts at a line start, at column 0: the header together with the first
    entry, then ``- seq:`` for each entry, ``ended:`` for the trailer. Every other line of
    a record is indented, except the header's keys and the trailer's ``reason:``. So the
    torn write began at the last column-0 line after the first entry that is not a
    trailer continuation; if there is none, the first write itself was torn.
    """
    starts = [m.end() for m in re.finditer(rb"\n(?=[^ \n])", data)]
    records = [0]
    first_entry_seen = data.startswith(b"- seq: ")
    for pos in starts:
        if not first_entry_seen:
            first_entry_seen = data.startswith(b"- seq: ", pos)
            continue  # header lines and the first entry were written together
        if data.startswith(b"reason:", pos) and data.startswith(b"ended:", records[-1]):
            continue
        records.append(pos)
    return records[-1]
