"""Archives for people and for HTTP: list, read, export, watch, sweep, prune and forget.

The one listing the HTTP routes, the admin feed and the CLI share. Everything here reads
the data directory directly (the CLI's commands work with the server stopped), and never
loads a transcript it does not have to:

* **Listing** reads only the header and the tail of each file
  (:func:`archive_info`). A ``since`` bound also skips files by name: an archive is named
  after the second it was renamed into place, which is never earlier than its ``ended``
  time, so ``ended < name + 1 s``.
* **Watch** uses watchfiles on ``<data>/users``; an archive appears complete because it
  is renamed into place. A new user directory is scanned once when it appears, in case
  an archive landed before the watch on it was in place.
* **Sweep** picks the dialogs idle for the session timeout (:func:`idle_dialogs`): the
  server's sweeper and ``archiver sweep`` ask the same question here.

Search lives in search.py and terminal rendering in render.py: the CLI's, which the
server never imports.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from .commit import Archived
from .dialogfile import (
    ARCHIVE_EXTRA,
    REASONS,
    ROLES,
    Dialog,
    Message,
    archive_bytes,
    complete_part,
    parse_dialog,
    read_summary,
)
from .errors import JournalError
from .fsops import fsync_dir, rename_noreplace, write_new_synced
from .journal import Journal, NotOwner
from .layout import (
    ARCHIVE_NAME,
    Layout,
    archive_names_for,
    archive_sort_key,
    file_kind,
    tmp_copy_prefix,
    user_dir_name,
)

OnError = Callable[[Path, Exception], None]
# What can go wrong reading one file: it vanished, is unreadable, or is not a dialog.
FILE_ERRORS = (OSError, ValueError, JournalError)


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


def archive_info(user: str, path: Path) -> ArchiveInfo:
    """An archive's header and trailer, from the two ends of its file."""
    summary = read_summary(path)
    return ArchiveInfo(
        user=user,
        name=path.name,
        dialog=summary.dialog,
        started=summary.started,
        ended=summary.ended,
        reason=summary.reason,
        messages=summary.messages,
    )


class UnknownUser(LookupError):
    """No directory for this user in the data directory."""

    def __init__(self, user: str) -> None:
        super().__init__(f"no user {user!r} in this data directory")
        self.user = user


# ---------------------------------------------------------------------------------------
# Time bounds


def utc_text(moment: datetime) -> str:
    """The journal's timestamp form, ``2026-11-21T10:30:05.420Z``, which sorts as text."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"


def parse_time(value: str, *, end: bool = False) -> str:
    """A ``--since``/``--until`` value as a UTC timestamp bound.

    ``2026-11-21`` is that whole UTC day: its start, or with ``end`` the start of the next
    day. A full ISO time (``2026-11-21T10:30``, ``...Z``, ``...+02:00``; UTC if no offset)
    is that instant; with ``end`` the bound is exclusive, so one millisecond is added.
    """
    value = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            moment = datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
            step = timedelta(days=1)
        else:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            step = timedelta(milliseconds=1)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a date (2026-11-21) nor an ISO time (2026-11-21T10:30:00Z)"
        ) from None
    return utc_text(moment + step if end else moment)


def name_time(name: str, millis: int = 0) -> str:
    """The UTC time an archive's file name records (the second it was archived)."""
    match = ARCHIVE_NAME.match(name)
    if match is None:
        return ""
    day, hms = match.group(1)[:10], match.group(1)[11:].replace("-", ":")
    return f"{day}T{hms}.{millis:03d}Z"


@dataclass(frozen=True)
class Filter:
    """Which archives: by user, by ``ended`` time (``since`` <= ended < ``before``), reason."""

    user: str | None = None
    since: str | None = None
    before: str | None = None
    reason: str | None = None

    def wants(self, info: ArchiveInfo) -> bool:
        return self.wants_archive(info.name, info.ended, info.reason)

    def wants_archive(self, name: str, ended: str | None, reason: str | None) -> bool:
        if self.reason is not None and reason != self.reason:
            return False
        return self.in_window(ended or name_time(name))

    def in_window(self, stamp: str) -> bool:
        if self.since is not None and stamp < self.since:
            return False
        return self.before is None or stamp < self.before

    @property
    def by_trailer(self) -> bool:
        """Whether judging an archive needs its trailer (``ended``, ``reason``)."""
        return self.reason is not None or self.since is not None or self.before is not None

    def too_old(self, name: str) -> bool:
        """True if the archive ``name`` ended before ``since``, known from its name alone."""
        return self.since is not None and name_time(name, 999) < self.since


def archive_time(info: ArchiveInfo) -> str:
    """When an archive ended: its ``ended``, or the time in its name if it has none."""
    return info.ended or name_time(info.name)


def _newest_first(info: ArchiveInfo) -> tuple[str, tuple[str, int], str]:
    return (archive_time(info), archive_sort_key(info.name), info.user)


# ---------------------------------------------------------------------------------------
# Users and listing


def users_of(journal: Journal, user: str | None) -> list[str]:
    """``[user]`` if that user has a directory (else UnknownUser), or every user."""
    if user is None:
        return journal.layout.users()
    if not journal.layout.has_user(user):
        raise UnknownUser(user)
    return [user]


def list_archives(
    journal: Journal,
    user: str | None = None,
    *,
    where: Filter | None = None,
    limit: int | None = None,
    on_error: OnError | None = None,
) -> list[ArchiveInfo]:
    """Archives of ``user`` (or of everyone) that pass ``where``, newest first.

    A file that cannot be read is skipped and passed to ``on_error``. For one user the
    names are in time order already, so a ``limit`` reads only that many files (the
    HTTP listing and a replay's look for a dialog pay for what they show).
    """
    where = where or Filter()
    found: list[ArchiveInfo] = []
    users = users_of(journal, user if user is not None else where.user)
    for name_user in users:
        directory = journal.layout.archived_dir(name_user)
        for name in journal.layout.archive_names(name_user):
            if limit is not None and len(users) == 1 and len(found) >= limit:
                break
            if where.too_old(name):
                break  # names are newest first, so every later one is older still
            path = directory / name
            try:
                info = archive_info(name_user, path)
            except FileNotFoundError:
                continue  # pruned meanwhile
            except FILE_ERRORS as exc:
                if on_error is not None:
                    on_error(path, exc)
                continue
            if where.wants(info):
                found.append(info)
    found.sort(key=_newest_first, reverse=True)
    return found if limit is None else found[:limit]


def user_archives(journal: Journal, user: str, limit: int | None = None) -> list[ArchiveInfo]:
    """The user's archives, newest first (none for a user without a directory)."""
    try:
        return list_archives(journal, user, limit=limit)
    except UnknownUser:
        return []


def find_archive(journal: Journal, user: str, name: str) -> Path | None:
    path = journal.layout.archive_path(user, name)
    return path if path is not None and path.is_file() else None


def read_archive(journal: Journal, user: str, name: str) -> bytes | None:
    """The exact bytes of archive ``name`` of ``user``; None if there is none."""
    path = journal.layout.archive_path(user, name)
    if path is None:
        return None
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def messages_after(
    journal: Journal, user: str, dialog: str, seq: int
) -> tuple[Dialog | None, str | None]:
    """Messages of ``dialog`` after ``seq``, from current.yaml or its archive.

    Returns (dialog with only those messages, archive name if it was archived).
    """
    current = journal.load_current(user)
    if current is not None and current.dialog == dialog:
        return current.after(seq), None
    for info in user_archives(journal, user, limit=20):
        if info.dialog == dialog:
            data = read_archive(journal, user, info.name)
            if data is not None:
                return parse_dialog(data).after(seq), info.name
    return None, None


def read_dialog(path: Path, *, live: bool = False) -> Dialog:
    """Parse a dialog file; ``live`` for a journal, whose torn tail is left out (not fixed)."""
    data = path.read_bytes()
    if live:
        data = complete_part(data)
    return parse_dialog(data)


def export_dialogs(
    journal: Journal,
    where: Filter | None = None,
    on_error: OnError | None = None,
) -> Iterator[tuple[ArchiveInfo, Dialog]]:
    """Each archive that passes ``where``, parsed, newest first (unreadable ones skipped)."""
    for info in list_archives(journal, where=where, on_error=on_error):
        path = journal.layout.archived_dir(info.user) / info.name
        try:
            dialog = read_dialog(path)
        except FileNotFoundError:
            continue
        except FILE_ERRORS as exc:
            if on_error is not None:
                on_error(path, exc)
            continue
        yield info, dialog


def export(
    journal: Journal,
    where: Filter | None = None,
    on_error: OnError | None = None,
) -> Iterator[dict[str, Any]]:
    """One JSON-ready object per archive, with its messages, newest first."""
    for info, dialog in export_dialogs(journal, where, on_error):
        yield export_object(info.user, info.name, dialog)


def export_object(user: str, name: str, dialog: Dialog) -> dict[str, Any]:
    """An archive as one JSON Lines object (what ``archiver import`` reads back)."""
    body = dialog.as_json()
    # The user is the one whose directory holds the file, whatever its header says.
    out: dict[str, Any] = {"user": user, "name": name}
    out.update((k, v) for k, v in body.items() if k not in ("user", "messages"))
    out.update(dialog.extra)
    out["messages"] = body["messages"]
    return out


# ---------------------------------------------------------------------------------------
# Watch


def watch_archives(
    journal: Journal,
    user: str | None = None,
    *,
    stop_event: Any = None,
    ready: Callable[[], None] | None = None,
    tick_ms: int = 250,
) -> Iterator[ArchiveInfo]:
    """Yield each archive as it lands (also other processes'), until ``stop_event`` is set.

    ``ready`` is called once the watch is in place: archives that land after it are seen.
    Ctrl+C ends the iteration quietly.
    """
    import watchfiles

    layout = journal.layout
    root = layout.users_dir if layout.users_dir.is_dir() else layout.data_dir
    if not root.is_dir():
        raise FileNotFoundError(f"no data directory {root}")
    only = None if user is None else user_dir_name(user)
    seen: set[Path] = set()

    def added(change: watchfiles.Change, _path: str) -> bool:
        return change == watchfiles.Change.added

    for batch in watchfiles.watch(
        root,
        watch_filter=added,
        stop_event=stop_event,
        debounce=200,
        step=50,
        rust_timeout=tick_ms,
        yield_on_timeout=True,
        raise_interrupt=False,
    ):
        if ready is not None:
            ready()
            ready = None
        for path in sorted(new_archives(layout, batch, only)):
            if path in seen:
                continue
            seen.add(path)
            with contextlib.suppress(*FILE_ERRORS):
                yield archive_info(layout.archive_of(path) or "", path)


def new_archives(layout: Layout, batch: set[tuple[Any, str]], only: str | None) -> set[Path]:
    """The archives a watchfiles batch of ``added`` changes under ``users_dir`` brought
    (of the user directory ``only``, if given), including those inside directories that
    appeared: a new user's first archive can land before a watch on its directory is in
    place."""
    found: set[Path] = set()
    users_dir = layout.users_dir
    for _, raw in batch:
        path = Path(raw)
        if path != users_dir and users_dir not in path.parents:
            continue  # the data directory's other contents (when users/ did not exist)
        parts = path.relative_to(users_dir).parts
        if parts and only is not None and parts[0] != only:
            continue
        if len(parts) == 4:
            if layout.archive_of(path) is not None:
                found.add(path)
        elif len(parts) < 4 and path.is_dir():  # appeared with whatever it holds already
            below = layout.archives_below(path)
            found.update(p for p in below if only is None or p.parts[-4] == only)
    return found


# ---------------------------------------------------------------------------------------
# Sweep, prune, forget


def current_mtimes(journal: Journal) -> Iterator[tuple[str, float]]:
    """(user, mtime of current.yaml) for every user with a current dialog."""
    for user, path in journal.layout.current_files():
        try:
            yield user, os.stat(path).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            continue


def idle_dialogs(
    mtimes: Iterable[tuple[str, float]], older_than: float, now: float | None = None
) -> list[str]:
    """Of (user, mtime) pairs (:func:`current_mtimes`), the users whose current dialog has
    not been written for ``older_than`` seconds: what a sweep archives (each archive
    re-checks it under the user's lock)."""
    now = time.time() if now is None else now
    return [user for user, mtime in mtimes if now - mtime >= older_than]


def sweep(
    journal: Journal,
    older_than: float,
    on_error: OnError | None = None,
    *,
    force: bool = True,
    skipped: list[str] | None = None,
) -> Iterator[Archived]:
    """Archive (reason ``timeout``) every current dialog idle for ``older_than`` seconds.

    Takes each user's lock (:meth:`Journal.archive` re-checks idleness under it), so it
    is safe while servers run on the same data directory. The server's sweeper asks
    :func:`idle_dialogs` the same question (archiving.py). Without ``force``, a dialog a
    live instance owns (its reply may be streaming) is left to it and its user added to
    ``skipped``.
    """
    for user in idle_dialogs(list(current_mtimes(journal)), older_than):
        try:
            archived = journal.archive(user, "timeout", idle_for=older_than, owned=not force)
        except NotOwner:
            if skipped is not None:
                skipped.append(user)
            continue
        except (OSError, JournalError) as exc:
            if on_error is not None:
                on_error(journal.layout.current_path(user), exc)
            continue
        if archived is not None:
            yield archived


@dataclass(frozen=True)
class Pruned:
    info: ArchiveInfo
    path: Path


def prune(
    journal: Journal, older_than_days: float, *, dry_run: bool = False, now: float | None = None
) -> Iterator[Pruned]:
    """Delete archives that ended more than ``older_than_days`` ago; yield each one."""
    now = time.time() if now is None else now
    cutoff = utc_text(datetime.fromtimestamp(now - older_than_days * 86400, UTC))
    for info in list_archives(journal, where=Filter(before=cutoff)):
        path = journal.layout.archived_dir(info.user) / info.name
        if not dry_run:
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # someone else pruned it
        yield Pruned(info, path)


@dataclass
class Forgotten:
    """What erasing one user removed, as paths relative to the data directory."""

    user: str
    files: list[Path] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """``3 archives, 1 journal, 1 torn side file, 1 other file, 3 directories``."""
        kinds = [file_kind(path) for path in self.files]
        parts = [plural(kinds.count(k), k) for k in _KINDS if k in kinds]
        parts.append(plural(len(self.directories), "directory", "directories"))
        return ", ".join(parts)


_KINDS = ("archive", "journal", "torn side file", "other file")


def plural(count: float, word: str, words: str | None = None) -> str:
    number = str(int(count)) if count == int(count) else f"{count:g}"
    return f"{number} {word if count == 1 else words or word + 's'}"


def user_contents(journal: Journal, user: str) -> list[Path]:
    """Every file under the user's directory (what :func:`forget` would remove)."""
    top = journal.layout.user_dir(user)
    if not top.is_dir():
        raise UnknownUser(user)
    return sorted(Path(base) / name for base, _dirs, files in os.walk(top) for name in files)


def forget(journal: Journal, user: str) -> Forgotten:
    """Erase everything of ``user``: journal, archives, side files, lock, directory.

    Holds the user's lock while it deletes, so no append or archive of this user runs
    meanwhile; one that was waiting for the lock finds the directory gone (and a later
    chat starts afresh).
    """
    top = journal.layout.user_dir(user)
    if not top.is_dir():
        raise UnknownUser(user)
    root = journal.layout.data_dir
    done = Forgotten(user)
    with journal.locked(user, create=False):
        for base, dirs, files in os.walk(top, topdown=False):
            for name in sorted(files) + [d for d in dirs if os.path.islink(Path(base) / d)]:
                path = Path(base) / name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    done.files.append(path.relative_to(root))
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(base)
                done.directories.append(Path(base).relative_to(root))
    return done


# ---------------------------------------------------------------------------------------
# Deleting one archive


class NoSuchArchive(LookupError):
    def __init__(self, user: str, name: str) -> None:
        super().__init__(f"no archive {name!r} for user {user!r}")


@dataclass(frozen=True)
class Removed:
    user: str
    name: str
    dialog: str  # "" if the file could not be read as a dialog
    path: Path


def remove_archive(journal: Journal, user: str, name: str) -> Removed:
    """Delete archive ``name`` of ``user``, under the user's lock (as :func:`forget`)."""
    if not journal.layout.has_user(user):
        raise UnknownUser(user)
    path = journal.layout.archive_path(user, name)
    if path is None or not path.is_file():
        raise NoSuchArchive(user, name)
    with journal.locked(user, create=False):
        try:
            dialog = read_summary(path).dialog
        except FileNotFoundError:
            raise NoSuchArchive(user, name) from None
        except FILE_ERRORS:
            dialog = ""  # a damaged file can still be deleted
        try:
            path.unlink()
        except FileNotFoundError:
            raise NoSuchArchive(user, name) from None
        fsync_dir(path.parent)
    return Removed(user, name, dialog, path)


# ---------------------------------------------------------------------------------------
# Importing an export


class BadImport(ValueError):
    """An export that cannot be imported; the message says which lines and why."""


@dataclass(frozen=True)
class Importable:
    """One line of an export, checked: the archive it becomes and its exact bytes."""

    line: int
    user: str
    name: str
    dialog: Dialog
    data: bytes


_EXPORT_KEYS = {"user", "name", "dialog", "started", "ended", "reason", "messages"}


def read_export_line(number: int, text: str) -> Importable:
    """One JSON Lines object of ``archiver export``, as an archive; ValueError says why not."""
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(item, dict):
        raise ValueError("not a JSON object")
    missing = sorted(_EXPORT_KEYS - set(item))
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    unknown = sorted(set(item) - _EXPORT_KEYS - set(ARCHIVE_EXTRA))
    if unknown:
        raise ValueError(f"unknown field {', '.join(unknown)}")
    fields = {k: item[k] for k in ("user", "name", "dialog", "started", "ended", "reason")}
    if not all(isinstance(v, str) and v for v in fields.values()):
        raise ValueError("user, name, dialog, started, ended and reason must be strings")
    if ARCHIVE_NAME.match(fields["name"]) is None:
        raise ValueError(f"{fields['name']!r} is not an archive name")
    if fields["reason"] not in REASONS:
        raise ValueError(f"reason {fields['reason']!r} is not one of {', '.join(REASONS)}")
    user_dir_name(fields["user"])  # BadUserId (a ValueError) for an id we cannot store
    extra = {k: item[k] for k in ARCHIVE_EXTRA if k in item}
    if not all(isinstance(v, str) for v in extra.values()):
        raise ValueError("redacted must be a string")
    dialog = Dialog(
        user=fields["user"],
        dialog=fields["dialog"],
        started=fields["started"],
        messages=_messages(item["messages"]),
        ended=fields["ended"],
        reason=fields["reason"],
        extra=extra,
    )
    return Importable(number, fields["user"], fields["name"], dialog, archive_bytes(dialog))


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("messages must be a non-empty list")
    out = []
    for n, m in enumerate(raw, start=1):
        ok = isinstance(m, dict) and set(m) <= {"seq", "role", "at", "text", "interrupted"}
        if not ok or not {"seq", "role", "at", "text"} <= set(m):
            raise ValueError(f"message {n} is not {{seq, role, at, text[, interrupted]}}")
        if not isinstance(m["seq"], int) or isinstance(m["seq"], bool) or m["seq"] != n:
            raise ValueError(f"message {n} has seq {m['seq']!r}, not {n}")
        if m["role"] not in ROLES or not isinstance(m["at"], str):
            raise ValueError(f"message {n}: role must be one of {', '.join(ROLES)}")
        if not isinstance(m["text"], str) or m.get("interrupted", False) not in (True, False):
            raise ValueError(f"message {n}: text must be a string, interrupted true or false")
        out.append(Message(n, m["role"], m["at"], m["text"], bool(m.get("interrupted"))))
    return out


def check_import(journal: Journal, items: list[Importable]) -> list[str]:
    """Why these archives cannot be imported (empty: they can): a dialog id that is
    already there, in an archive or the live dialog, or given twice."""
    problems = []
    seen: dict[tuple[str, str], int] = {}
    known: dict[str, set[str]] = {}
    for item in items:
        key = (item.user, item.dialog.dialog)
        if key in seen:
            problems.append(f"line {item.line}: dialog {key[1]} is also on line {seen[key]}")
            continue
        seen[key] = item.line
        if item.user not in known:
            known[item.user] = dialog_ids(journal, item.user)
        if item.dialog.dialog in known[item.user]:
            problems.append(
                f"line {item.line}: user {item.user!r} already has dialog {item.dialog.dialog}"
            )
    return problems


def dialog_ids(journal: Journal, user: str) -> set[str]:
    """The dialog ids of the user's archives and live dialog."""
    layout = journal.layout
    paths = [layout.archived_dir(user) / n for n in layout.archive_names(user)]
    paths.append(layout.current_path(user))
    ids = set()
    for path in paths:
        with contextlib.suppress(*FILE_ERRORS):
            ids.add(read_summary(path).dialog)
    return ids


def write_import(journal: Journal, item: Importable) -> Path:
    """Write one checked archive under its user's lock, by a rename (never half a file):
    under its exported name, or the next free name of that second if it is taken."""
    with journal.locked(item.user, create=True):
        if item.dialog.dialog in dialog_ids(journal, item.user):
            raise BadImport(f"user {item.user!r} already has dialog {item.dialog.dialog}")
        archived = journal.layout.archived_dir(item.user)
        archived.mkdir(exist_ok=True)
        tmp = archived / (tmp_copy_prefix(item.dialog.dialog) + secrets.token_hex(3))
        write_new_synced(tmp, item.data)
        try:
            target = _rename_free(tmp, archived, item.name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(archived)
    return target


def _rename_free(tmp: Path, archived: Path, name: str) -> Path:
    stamp = ARCHIVE_NAME.match(name)
    assert stamp is not None
    second = calendar.timegm(time.strptime(stamp.group(1), "%Y-%m-%d-%H-%M-%S"))
    for candidate in (name, *archive_names_for(second)):
        try:
            rename_noreplace(tmp, archived / candidate)
        except FileExistsError:
            continue
        return archived / candidate
    raise BadImport(f"no free archive name in the second of {name}")
