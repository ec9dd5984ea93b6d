"""Full-text search of archives and live journals, for the CLI (``archiver search``).

Plain text first looks for the longest piece of the query that every YAML style the
journal writes keeps verbatim (ASCII printable, minus ``'``, ``"`` and ``\\``) in the
file's bytes, lower-cased. Only files containing it are read further, and of those only
the entries containing it are parsed (entries are the lines from a column-0 ``- `` to the
next column-0 line). The full query then runs, case-insensitive, on each parsed message
text. ``re.IGNORECASE`` also matches the dotted and dotless I to ``i``, the long s to
``s`` and the Kelvin sign to ``k``, which a lower-cased byte search cannot see, so a file
holding one of those is parsed whole. A regular expression has no such piece: it runs on
every parsed message.

With many files, forked processes share the reading (:func:`_search_forked`): only for a
single-threaded caller such as the CLI. The server never imports this module (a test
checks ``sys.modules``): a fork there would copy its threads mid-flight.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from . import dialogfile as fmt
from . import yamltext
from .archives import FILE_ERRORS, Filter, OnError, users_of, utc_text
from .dialogfile import Message
from .journal import Journal
from .layout import ARCHIVE_NAME, ARCHIVED, CURRENT
from .query import Hit

CURRENT_LABEL = CURRENT  # what a hit in a live journal names as its archive
__all__ = ["CURRENT_LABEL", "Hit", "Query", "search"]

# Non-ASCII characters that re.IGNORECASE matches to an ASCII letter; a lower-cased byte
# search for the letter would miss them.
_FOLDS_TO_ASCII = {
    "i": ("\u0130", "\u0131"),
    "k": ("\u212a",),
    "s": ("\u017f",),
}
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


class _Source(NamedTuple):
    # Plain strings and a tuple: at 10,000 files, pathlib and frozen dataclasses cost
    # a sizeable part of what the reads themselves do.
    user: str
    label: str  # archive name or "current.yaml"
    path: str


def _sources(journal: Journal, where: Filter, current: bool) -> list[_Source]:
    """Files to search, live journals first, then archives newest first by name."""
    users = users_of(journal, where.user)
    dirs = [journal.layout.dialogs_str(u) for u in users]
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


# Divergence #10: os.fork and pipes rather than multiprocessing (CLI only; see docstring).
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


def _search_file(source: _Source, query: Query, where: Filter, role: str | None) -> list[Hit]:
    data = _read(source.path)
    if source.label == CURRENT_LABEL:
        data = fmt.complete_part(data)
    elif where.by_trailer:
        trailer = fmt.trailer_in(data[-1024:])
        ended, reason = trailer if trailer else (None, None)
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
    dialog = fmt.parse_dialog(data)
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
    if not fmt.has_our_header(data):
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
            if not data.startswith(fmt.ENTRY_START, start):
                return None
            after = fmt.COLUMN0.search(data, pos)
            end = after.start() + 1 if after else len(data)
            if dialog is None:
                dialog = fmt.dialog_id_in(data)
            hits.extend(_hit(source, dialog, fmt.parse_entry(data[start:end]), query, role))
            pos = lowered.find(query.fragment, end)
    except (yamltext.ParseError, UnicodeDecodeError, KeyError, ValueError):
        return None
    return hits
