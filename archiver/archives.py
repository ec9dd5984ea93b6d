"""Archives for people and for HTTP: list, read, export and watch.

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

What changes the archives (sweep, prune, forget, rm, import) is in archive_writes.py;
search in search.py and terminal rendering in render.py: the CLI's, which the server
never imports.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from .dialogfile import (
    Dialog,
    complete_part,
    parse_dialog,
    read_summary,
)
from .errors import JournalError
from .journal import Journal
from .layout import (
    ARCHIVE_NAME,
    Layout,
    archive_sort_key,
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
            info = read_info(name_user, directory / name, on_error)
            if info is not None and where.wants(info):
                found.append(info)
    found = newest_first(found)
    return found if limit is None else found[:limit]


def read_info(user: str, path: Path, on_error: OnError | None) -> ArchiveInfo | None:
    """:func:`archive_info`, or None: gone (pruned meanwhile), or unreadable (``on_error``)."""
    try:
        return archive_info(user, path)
    except FileNotFoundError:
        return None
    except FILE_ERRORS as exc:
        if on_error is not None:
            on_error(path, exc)
        return None


def newest_first(infos: list[ArchiveInfo]) -> list[ArchiveInfo]:
    return sorted(infos, key=_newest_first, reverse=True)


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
# Words


def plural(count: float, word: str, words: str | None = None) -> str:
    number = str(int(count)) if count == int(count) else f"{count:g}"
    return f"{number} {word if count == 1 else words or word + 's'}"
