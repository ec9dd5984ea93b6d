"""What changes the archives: sweep, prune, forget, rm and import.

Each takes the user's lock (:meth:`Journal.locked`, or :meth:`Journal.archive`), so it is
safe while servers run on the same data directory; the reading side (listing, export,
watch) is archives.py.

* **Sweep** picks the dialogs idle for the session timeout (:func:`idle_dialogs`): the
  server's sweeper and ``archiver sweep`` ask the same question here.
* **Import** writes an archive by a rename (never half a file), refusing a dialog id the
  user already has.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .archives import (
    FILE_ERRORS,
    ArchiveInfo,
    Filter,
    OnError,
    UnknownUser,
    list_archives,
    plural,
    utc_text,
)
from .commit import Archived
from .dialogfile import (
    ARCHIVE_EXTRA,
    REASONS,
    ROLES,
    Dialog,
    Message,
    archive_bytes,
    read_summary,
)
from .errors import JournalError
from .fsops import fsync_dir, rename_noreplace, write_new_synced
from .journal import Journal, NotOwner
from .layout import (
    ARCHIVE_NAME,
    archive_names_for,
    file_kind,
    tmp_copy_prefix,
    user_dir_name,
)

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


_MESSAGE_KEYS = {"seq", "role", "at", "text", "interrupted", "key", "upstream", "first_token_ms"}


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("messages must be a non-empty list")
    out = []
    for n, m in enumerate(raw, start=1):
        ok = isinstance(m, dict) and set(m) <= _MESSAGE_KEYS
        if not ok or not {"seq", "role", "at", "text"} <= set(m):
            raise ValueError(f"message {n} is not {{seq, role, at, text[, interrupted, ...]}}")
        if not isinstance(m["seq"], int) or isinstance(m["seq"], bool) or m["seq"] != n:
            raise ValueError(f"message {n} has seq {m['seq']!r}, not {n}")
        if m["role"] not in ROLES or not isinstance(m["at"], str):
            raise ValueError(f"message {n}: role must be one of {', '.join(ROLES)}")
        if not isinstance(m["text"], str) or m.get("interrupted", False) not in (True, False):
            raise ValueError(f"message {n}: text must be a string, interrupted true or false")
        out.append(_message(n, m))
    return out


def _message(n: int, m: dict[str, Any]) -> Message:
    """Message ``n`` with its optional fields (key, upstream, first_token_ms), checked."""
    key, upstream, first = m.get("key"), m.get("upstream"), m.get("first_token_ms")
    if not all(v is None or (isinstance(v, str) and v) for v in (key, upstream)):
        raise ValueError(f"message {n}: key and upstream must be non-empty strings")
    if first is not None and (type(first) is not int or first < 0):
        raise ValueError(f"message {n}: first_token_ms must be a whole number >= 0")
    interrupted = bool(m.get("interrupted"))
    return Message(n, m["role"], m["at"], m["text"], interrupted, key, upstream, first)


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
