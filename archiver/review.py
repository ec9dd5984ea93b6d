"""Reading archives for people: list, search, watch, export, prune and forget.

Shared by the CLI and the HTTP review routes. Everything here reads the data directory
directly, so it works with the server stopped, and never loads a transcript it does not
have to:

* **Listing** reads only the header and the tail of each file
  (:meth:`archiver.journal.Journal.archive_info`). A ``since`` bound also skips files by
  name: an archive is named after the second it was renamed into place, which is never
  earlier than its ``ended`` time, so ``ended < name + 1 s``.
* **Search** (plain text) first looks for the longest piece of the query that every
  YAML style the journal writes keeps verbatim (ASCII printable, minus ``'``, ``"`` and
  ``\\``) in the file's bytes, lower-cased. Only files containing it are read further,
  and of those only the entries containing it are parsed (entries are the lines from a
  column-0 ``- `` to the next column-0 line). The full query then runs, case-insensitive,
  on each parsed message text. ``re.IGNORECASE`` also matches the dotted and dotless I
  to ``i``, the long s to ``s`` and the Kelvin sign to ``k``, which a lower-cased byte
  search cannot see, so a file holding one of those is parsed whole. A regular
  expression has no such piece: it runs on every parsed message.
* **Watch** uses watchfiles on ``<data>/users``; an archive appears complete because it
  is renamed into place. A new user directory is scanned once when it appears, in case
  an archive landed before the watch on it was in place.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import signal
import textwrap
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from . import yamltext
from .journal import (
    ARCHIVE_NAME,
    ARCHIVED,
    CURRENT,
    TAIL_OK,
    Archived,
    ArchiveInfo,
    Dialog,
    Journal,
    JournalError,
    Message,
    archive_sort_key,
    dialog_id_in,
    message_from_fields,
    parse_dialog,
    torn_boundary,
    user_dir_name,
    user_from_dir_name,
)

CURRENT_LABEL = CURRENT  # what a hit in a live journal names as its archive
OnError = Callable[[Path, Exception], None]
# What can go wrong reading one file: it vanished, is unreadable, or is not a dialog.
FILE_ERRORS = (OSError, ValueError, JournalError)


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
        return journal.users()
    if not (journal.users_dir / user_dir_name(user)).is_dir():
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

    A file that cannot be read is skipped and passed to ``on_error``.
    """
    where = where or Filter()
    found: list[ArchiveInfo] = []
    for name_user in users_of(journal, user if user is not None else where.user):
        directory = journal.dialogs_dir(name_user) / ARCHIVED
        for name in journal.archive_names(name_user):
            if where.too_old(name):
                break  # names are newest first, so every later one is older still
            path = directory / name
            try:
                info = journal.archive_info(name_user, path)
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


def find_archive(journal: Journal, user: str, name: str) -> Path | None:
    path = journal.archive_path(user, name)
    return path if path is not None and path.is_file() else None


def read_dialog(path: Path, *, live: bool = False) -> Dialog:
    """Parse a dialog file; ``live`` for a journal, whose torn tail is left out (not fixed)."""
    data = path.read_bytes()
    if live:
        data = complete_part(data)
    return parse_dialog(data)


def complete_part(data: bytes) -> bytes:
    """A journal's bytes up to its last complete entry (all of it unless torn or mid-write)."""
    if not data or data.endswith(TAIL_OK):
        return data
    return data[: torn_boundary(data)]


def export(
    journal: Journal,
    where: Filter | None = None,
    on_error: OnError | None = None,
) -> Iterator[dict[str, Any]]:
    """One JSON-ready object per archive, with its messages, newest first."""
    for info in list_archives(journal, where=where, on_error=on_error):
        path = journal.dialogs_dir(info.user) / ARCHIVED / info.name
        try:
            dialog = read_dialog(path)
        except FileNotFoundError:
            continue
        except FILE_ERRORS as exc:
            if on_error is not None:
                on_error(path, exc)
            continue
        body = dialog.as_json()
        # The user is the one whose directory holds the file, whatever its header says.
        out: dict[str, Any] = {"user": info.user, "name": info.name}
        out.update((k, v) for k, v in body.items() if k not in ("user", "messages"))
        out.update(dialog.extra)
        out["messages"] = body["messages"]
        yield out


# ---------------------------------------------------------------------------------------
# Search

# Non-ASCII characters that re.IGNORECASE matches to an ASCII letter; a lower-cased byte
# search for the letter would miss them.
_FOLDS_TO_ASCII = {
    "i": ("\u0130", "\u0131"),
    "k": ("\u212a",),
    "s": ("\u017f",),
}
_COLUMN0 = re.compile(rb"\n(?=[^ \n])")
# ASCII printable but ' " and backslash: what every style yamltext writes keeps as is.
# No space in it: a query's whitespace matches any whitespace, which a file may hold as a
# line break and indentation (a block scalar) or an escape (a quoted one).
_VERBATIM = re.compile(r"[\x21\x23-\x26\x28-\x5b\x5d-\x7e]+")
_WHITESPACE = re.compile(r"\s+")


def _fragment(text: str) -> str:
    """The longest piece of ``text`` that the journal writes verbatim in any YAML style."""
    return max(_VERBATIM.findall(text), key=len, default="")


def _loose_whitespace(text: str) -> str:
    """A pattern for ``text`` in which any run of whitespace matches any run of whitespace
    ("line one line two" finds a message with a line break between "one" and "line")."""
    words = text.split()
    if not words:
        return re.escape(text)
    return _WHITESPACE.pattern.join(re.escape(word) for word in words)


@dataclass(frozen=True)
class Query:
    """What to look for: a text, case-insensitive, or a regular expression.

    ``re.error`` from :meth:`compile` means a bad regular expression.
    """

    pattern: re.Pattern[str]
    fragment: bytes | None  # lower-cased bytes every matching file contains, if known
    # UTF-8 of characters that fold to a letter of the fragment, each after its first
    # byte: a one-byte search (memchr) rules most files out far faster than the whole.
    folds: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def compile(cls, text: str, regex: bool = False) -> Query:
        if regex:
            return cls(re.compile(text), None)
        piece = _fragment(text).lower()
        folds = tuple(
            (ch.encode()[:1], ch.encode())
            for letter, chars in _FOLDS_TO_ASCII.items()
            if letter in piece
            for ch in chars
        )
        pattern = re.compile(_loose_whitespace(text), re.IGNORECASE)
        return cls(pattern, piece.encode() if piece else None, folds)

    def folds_in(self, data: bytes) -> bool:
        return any(lead in data and fold in data for lead, fold in self.folds)

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self.pattern.finditer(text) if m.end() > m.start()]


@dataclass(frozen=True)
class Hit:
    """One message that matched, and where in its text."""

    user: str
    archive: str  # the archive's file name, or "current.yaml"
    dialog: str
    message: Message
    spans: list[tuple[int, int]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user, "archive": self.archive}
        out["dialog"] = self.dialog
        out.update(self.message.as_json())
        out["matches"] = [list(span) for span in self.spans]
        return out


class _Source(NamedTuple):
    # Plain strings and a tuple: at 10,000 files, pathlib and frozen dataclasses cost
    # a sizeable part of what the reads themselves do.
    user: str
    label: str  # archive name or "current.yaml"
    path: str


def _sources(journal: Journal, where: Filter, current: bool) -> list[_Source]:
    """Files to search, live journals first, then archives newest first by name."""
    users = users_of(journal, where.user)
    dirs = [os.path.join(journal.users_dir, user_dir_name(u), "dialogs") for u in users]
    out: list[_Source] = []
    if current and where.reason is None and (where.before is None or where.before > _now()):
        for user, directory in zip(users, dirs, strict=True):
            path = os.path.join(directory, CURRENT)
            if os.path.isfile(path):
                out.append(_Source(user, CURRENT_LABEL, path))
    keyed: list[tuple[str, str, str, str]] = []
    for user, directory in zip(users, dirs, strict=True):
        archived = os.path.join(directory, ARCHIVED)
        try:
            names = os.listdir(archived)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if ARCHIVE_NAME.match(name) is None or (where.since and where.too_old(name)):
                continue
            keyed.append((_name_key(name), user, name, archived))
    keyed.sort(reverse=True)
    out.extend(_Source(user, name, f"{archived}/{name}") for _, user, name, archived in keyed)
    return out


def _name_key(name: str) -> str:
    """archive_sort_key as one string (cheaper to build and compare at 10,000 names)."""
    if len(name) == 24:  # 2026-11-21-10-30-00.yaml
        return name[:19]
    return name[:19] + "-" + name[20:-5].zfill(6)  # ...-00-2.yaml: after the plain name


def _now() -> str:
    return utc_text(datetime.now(UTC))


_READ = 65536


def _read(path: str) -> bytes:
    # One read() for a file of up to 64 KB (most archives); os.open skips io's buffers.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _READ)
        if len(data) < _READ:
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


PARALLEL_FROM = 2000  # files; below this, forking costs more than it saves


def search(
    journal: Journal,
    query: Query,
    where: Filter | None = None,
    *,
    role: str | None = None,
    current: bool = False,
    on_error: OnError | None = None,
    workers: int = 1,
) -> Iterator[Hit]:
    """Messages matching ``query``: live journals first (with ``current``), then archives
    newest first; within a dialog in order. ``where`` filters archives, not messages.

    With ``workers`` > 1 and many files, forked processes share the reading (see
    :func:`_search_forked`): only for a single-threaded caller such as the CLI, never
    inside the server, whose threads a fork would copy mid-flight.
    """
    where = where or Filter()
    sources = _sources(journal, where, current)
    results: Iterable[_Result]
    if workers > 1 and len(sources) >= PARALLEL_FROM and hasattr(os, "fork"):
        results = _search_forked(sources, query, where, role, workers)
    else:
        results = (_search_one(i, s, query, where, role) for i, s in enumerate(sources))
    for _, hits, error in results:
        if error is not None and on_error is not None:
            on_error(*error)
        yield from hits


_Result = tuple[int, list[Hit], tuple[Path, Exception] | None]


def _search_one(
    index: int, source: _Source, query: Query, where: Filter, role: str | None
) -> _Result:
    try:
        return index, _search_file(source, query, where, role), None
    except FileNotFoundError:
        return index, [], None  # pruned meanwhile
    except FILE_ERRORS as exc:
        return index, [], (Path(source.path), exc)


def _search_share(
    sources: list[_Source], share: int, workers: int, query: Query, where: Filter, role: str | None
) -> list[_Result]:
    """Every ``workers``-th file from ``share`` on; only the files with hits or errors.

    Errors become OSError or ValueError, which survive a pickle round trip (JournalError,
    whose constructor takes two arguments, would not).
    """
    out = []
    for index in range(share, len(sources), workers):
        result = _search_one(index, sources[index], query, where, role)
        if result[2] is not None and not isinstance(result[2][1], OSError):
            result = (index, result[1], (result[2][0], ValueError(str(result[2][1]))))
        if result[1] or result[2]:
            out.append(result)
    return out


def _search_forked(
    sources: list[_Source], query: Query, where: Filter, role: str | None, workers: int
) -> list[_Result]:
    """Search with ``workers`` processes: this one and forked children, each taking every
    ``workers``-th file (a fork shares the list for free), the children sending back
    their hits pickled through a pipe.

    Measured on 10,000 archives, 2 cores: the byte scan drops from ~75 to ~45 ms. A
    multiprocessing pool gained nothing: pickling the file list to it and starting it
    cost what the second core saved.
    """
    children: list[tuple[int, int]] = []
    try:
        for share in range(1, workers):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: search its share, send it, and leave at once
                os.close(read)
                status = 1
                try:
                    payload = pickle.dumps(
                        _search_share(sources, share, workers, query, where, role)
                    )
                    with open(write, "wb") as pipe:
                        pipe.write(payload)
                    status = 0
                finally:
                    os._exit(status)  # no atexit handlers, no flushing the parent's buffers
            os.close(write)
            children.append((pid, read))
        results = _search_share(sources, 0, workers, query, where, role)
        while children:
            pid, read = children[0]
            with open(read, "rb") as pipe:
                payload = pipe.read()
            _, status = os.waitpid(pid, 0)
            children.pop(0)
            if status != 0:
                raise OSError(f"a search worker failed (wait status {status})")
            results.extend(pickle.loads(payload))
    finally:
        for pid, read in children:  # only after an error or Ctrl+C
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            with contextlib.suppress(OSError):
                os.close(read)
    results.sort(key=lambda result: result[0])
    return results


_TRAILER = re.compile(rb"\nended: '([^'\n]*)'\nreason: ([^\n]*)\n")


def _search_file(source: _Source, query: Query, where: Filter, role: str | None) -> list[Hit]:
    data = _read(source.path)
    if source.label == CURRENT_LABEL:
        data = complete_part(data)
    elif where.by_trailer:
        trailer = _TRAILER.search(data, max(0, len(data) - 1024))
        ended = trailer.group(1).decode() if trailer else None
        reason = trailer.group(2).decode() if trailer else None
        if not where.wants_archive(source.label, ended, reason):
            return []
    fragment = query.fragment
    if fragment is not None and not (query.folds and query.folds_in(data)):
        lowered = data.lower()
        pos = lowered.find(fragment)
        if pos < 0:
            return []
        local = _search_entries(source, data, lowered, pos, query, role)
        if local is not None:
            return local
    dialog = parse_dialog(data)
    return [hit for m in dialog.messages for hit in _hit(source, dialog.dialog, m, query, role)]


def _hit(
    source: _Source, dialog: str, message: Message, query: Query, role: str | None
) -> list[Hit]:
    if role is not None and message.role != role:
        return []
    spans = query.spans(message.text)
    return [Hit(source.user, source.label, dialog, message, spans)] if spans else []


def _search_entries(
    source: _Source, data: bytes, lowered: bytes, pos: int, query: Query, role: str | None
) -> list[Hit] | None:
    """Parse only the entries holding the fragment; None if the file is not in our shape.

    Our files are a header, entries that each start with a column-0 ``- seq:`` line and
    continue with indented lines (blank lines only inside a literal block), then a
    trailer; no value spans lines except a literal block, whose lines are indented.
    """
    assert query.fragment is not None
    if data.find(b"\nmessages:\n", 0, 8192) < 0:
        return None
    dialog: str | None = None
    hits: list[Hit] = []
    try:
        while pos >= 0:
            line = data.rfind(b"\n", 0, pos) + 1
            if data.startswith(b"- ", line):
                start = line
            elif data.startswith(b" ", line):
                start = data.rfind(b"\n- ", 0, line) + 1
                if start == 0:
                    return None
            else:  # a header or trailer line: not a message
                newline = data.find(b"\n", pos)
                pos = -1 if newline < 0 else lowered.find(query.fragment, newline)
                continue
            if not data.startswith(b"- seq: ", start):
                return None
            after = _COLUMN0.search(data, pos)
            end = after.start() + 1 if after else len(data)
            if dialog is None:
                dialog = dialog_id_in(data)
            hits.extend(_hit(source, dialog, _message(data[start:end]), query, role))
            pos = lowered.find(query.fragment, end)
    except (yamltext.ParseError, UnicodeDecodeError, KeyError, ValueError):
        return None
    return hits


_ENTRY_HEAD = re.compile(
    r"- seq: (\d+)\n  role: (user|assistant|error)\n  at: '([^'\n]*)'\n  text: "
)


def _message(entry: bytes) -> Message:
    """One entry, in the exact shape journal.message_text writes (the four fields in
    their order: only the text needs a YAML reader), or else read generically."""
    text = entry.decode("utf-8")
    head = _ENTRY_HEAD.match(text)
    if head is None:
        return _message_of_fields(text)
    lines = yamltext.split_lines(text[head.end() - 8 :])  # from "  text: " on
    value, end = yamltext.parse_value(lines[0][8:], lines, 1, 2)
    rest = lines[end:]
    if rest not in ([], ["  interrupted: true"]):
        return _message_of_fields(text)
    return Message(int(head[1]), head[2], head[3], value, interrupted=bool(rest))


def _message_of_fields(text: str) -> Message:
    fields, _ = yamltext.parse_mapping_lines(yamltext.split_lines(text), 0, 2)
    return message_from_fields(fields)


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

    root = journal.users_dir if journal.users_dir.is_dir() else journal.users_dir.parent
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
        for path in sorted(new_archives(journal.users_dir, batch, only)):
            if path in seen:
                continue
            seen.add(path)
            with contextlib.suppress(*FILE_ERRORS):
                yield journal.archive_info(user_from_dir_name(path.parts[-4]), path)


def new_archives(users_dir: Path, batch: set[tuple[Any, str]], only: str | None) -> set[Path]:
    """The archives a watchfiles batch of ``added`` changes under ``users_dir`` brought
    (of the user directory ``only``, if given), including those inside directories that
    appeared: a new user's first archive can land before a watch on its directory is in
    place."""
    found: set[Path] = set()
    for _, raw in batch:
        path = Path(raw)
        if path != users_dir and users_dir not in path.parents:
            continue  # the data directory's other contents (when users/ did not exist)
        parts = path.relative_to(users_dir).parts
        if parts and only is not None and parts[0] != only:
            continue
        if len(parts) == 4 and parts[1:3] == ("dialogs", ARCHIVED):
            if ARCHIVE_NAME.match(parts[3]):
                found.add(path)
        elif len(parts) < 4 and path.is_dir():  # appeared with whatever it holds already
            found.update(_archives_below(path, len(parts), only))
    return found


def _archives_below(directory: Path, depth: int, only: str | None) -> Iterator[Path]:
    """Archives under a directory that has just appeared ``depth`` levels below users/."""
    pattern = "/".join(["*", "dialogs", ARCHIVED, "*.yaml"][depth:])
    for path in directory.glob(pattern):
        if ARCHIVE_NAME.match(path.name) and (only is None or path.parts[-4] == only):
            yield path


# ---------------------------------------------------------------------------------------
# Sweep, prune, forget


def sweep(
    journal: Journal, older_than: float, on_error: OnError | None = None
) -> Iterator[Archived]:
    """Archive (reason ``timeout``) every current dialog idle for ``older_than`` seconds.

    Takes each user's lock (:meth:`Journal.archive` re-checks idleness under it), so it
    is safe while servers run on the same data directory.
    """
    now = time.time()
    for user, mtime in list(journal.current_mtimes()):
        if now - mtime < older_than:
            continue
        try:
            archived = journal.archive(user, "timeout", idle_for=older_than)
        except (OSError, JournalError) as exc:
            if on_error is not None:
                on_error(journal.current_path(user), exc)
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
        path = journal.dialogs_dir(info.user) / ARCHIVED / info.name
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
        kinds = [_kind(path) for path in self.files]
        parts = [plural(kinds.count(k), k) for k in _KINDS if k in kinds]
        parts.append(plural(len(self.directories), "directory", "directories"))
        return ", ".join(parts)


_KINDS = ("archive", "journal", "torn side file", "other file")


def plural(count: float, word: str, words: str | None = None) -> str:
    number = str(int(count)) if count == int(count) else f"{count:g}"
    return f"{number} {word if count == 1 else words or word + 's'}"


def _kind(path: Path) -> str:
    if path.parent.name == ARCHIVED and ARCHIVE_NAME.match(path.name):
        return "archive"
    if path.name == CURRENT:
        return "journal"
    if path.name.startswith(CURRENT + ".torn-"):
        return "torn side file"
    return "other file"


def user_contents(journal: Journal, user: str) -> list[Path]:
    """Every file under the user's directory (what :func:`forget` would remove)."""
    top = journal.users_dir / user_dir_name(user)
    if not top.is_dir():
        raise UnknownUser(user)
    return sorted(Path(base) / name for base, _dirs, files in os.walk(top) for name in files)


def forget(journal: Journal, user: str) -> Forgotten:
    """Erase everything of ``user``: journal, archives, side files, lock, directory.

    Holds the user's lock while it deletes, so no append or archive of this user runs
    meanwhile; one that was waiting for the lock finds the directory gone (and a later
    chat starts afresh).
    """
    top = journal.users_dir / user_dir_name(user)
    if not top.is_dir():
        raise UnknownUser(user)
    root = journal.users_dir.parent
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
# Rendering for a terminal

Style = Callable[..., str]


def _plain(text: str, **_: Any) -> str:
    return text


def printable(text: str) -> str:
    """``text`` with control and format characters escaped, so it cannot drive a terminal."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif unicodedata.category(ch) == "Zs":
            out.append(" ")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def short_time(stamp: str, day: str | None = None) -> str:
    """``2026-11-21T10:30:05.420Z`` as ``2026-11-21 10:30:05``, or ``10:30:05`` on ``day``."""
    if len(stamp) < 19 or stamp[10] != "T":
        return stamp
    if day is not None and stamp[:10] == day:
        return stamp[11:19]
    return stamp[:10] + " " + stamp[11:19]


def terminal_width(default: int = 100) -> int:
    # shutil's, not os's: a terminal that reports 0 columns (under `script`, some CI
    # runners) or none at all falls back to COLUMNS, then to the default.
    return shutil.get_terminal_size((default, 24)).columns


ROLE_COLORS = {"user": "cyan", "assistant": "green", "error": "red"}


def render(dialog: Dialog, width: int | None = None, style: Style = _plain) -> str:
    """A transcript as a conversation: who, when, and the text wrapped and indented.

    ``style`` is :func:`click.style` for colour (click strips it when not on a terminal).
    """
    width = width or min(terminal_width(), 100)
    title = f"dialog {dialog.dialog}  user {printable(dialog.user)}"
    lines = [style(title, bold=True)]
    span = f"started {short_time(dialog.started)} UTC"
    if dialog.ended:
        span += f"  ended {short_time(dialog.ended)} UTC ({dialog.reason})"
    lines.append(f"{span}  {plural(len(dialog.messages), 'message')}")
    lines.append("")
    day = dialog.started[:10]
    for message in dialog.messages:
        flag = style("  [interrupted]", fg="yellow") if message.interrupted else ""
        when = style(short_time(message.at, day), dim=True)
        day = message.at[:10]
        role = style(message.role, fg=ROLE_COLORS.get(message.role), bold=True)
        lines.append(f"{when}  #{message.seq} {role}{flag}")
        lines.extend(_wrapped(printable_lines(message.text), width - 4, "    "))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def printable_lines(text: str) -> list[str]:
    return [printable(line) for line in text.split("\n")]


def _wrapped(lines: list[str], width: int, indent: str) -> list[str]:
    out: list[str] = []
    for line in lines:
        parts = textwrap.wrap(line, width=max(width, 20), replace_whitespace=False)
        out.extend(indent + part for part in (parts or [""]))
    return out


EXCERPT = 160  # longest matching line shown whole; longer ones are cut around the match


def hit_lines(hit: Hit, style: Style = _plain) -> list[str]:
    """One line per matching line of the message: where it is, then the line, highlighted."""
    where = (
        style(printable(hit.user), fg="magenta")
        + "  "
        + style(hit.archive, fg="blue")
        + f"  #{hit.message.seq} "
        + style(hit.message.role, fg=ROLE_COLORS.get(hit.message.role))
    )
    out = []
    line_start = 0
    for line in hit.message.text.split("\n"):
        line_end = line_start + len(line)
        spans = [
            (max(s, line_start) - line_start, min(e, line_end) - line_start)
            for s, e in hit.spans
            if s < line_end and e > line_start
        ]
        if spans:
            out.append(f"{where}  {_highlight(line, spans, style)}")
        line_start = line_end + 1
    return out or [where]


def _highlight(line: str, spans: list[tuple[int, int]], style: Style) -> str:
    lo, hi = 0, len(line)
    if len(line) > EXCERPT:
        lo = max(0, spans[0][0] - EXCERPT // 3)
        hi = min(len(line), lo + EXCERPT)
    pieces = ["…" if lo > 0 else ""]
    pos = lo
    for start, end in spans:
        start, end = max(start, pos), min(end, hi)
        if start >= end:
            continue
        pieces.append(printable(line[pos:start]))
        pieces.append(style(printable(line[start:end]), fg="red", bold=True))
        pos = end
    pieces.append(printable(line[pos:hi]))
    pieces.append("…" if hi < len(line) else "")
    return "".join(pieces)
