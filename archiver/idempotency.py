"""Idempotency keys: a repeated ``POST /chat`` is answered, never journaled twice.

A client that lost the answer to a chat (a restart behind nginx, a mobile network) sends
it again with the same ``Idempotency-Key`` header (the IETF httpapi draft's name). The key
is a field of the user's entry in the journal (``key:``), so a repeat is recognized by
any process, after a restart, and after the dialog was archived.

:class:`KeyIndex` is what the journal asks, under the user's ``flock``, before a keyed
append. It keeps, per user, the keys of the current dialog and how many bytes of the
journal it has read; a lookup reads only the bytes appended since (by this process or
another), so the whole journal is read once per user per process, then O(message) per
chat. On a miss it also looks in the user's ``RECENT_ARCHIVES`` newest archives (each is
read once: archives never change), so a repeat that arrives after its dialog was
archived is answered from the archive. Older archives are not searched: a client retries
within seconds or minutes, not several dialogs later.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import dialogfile as fmt
from . import yamltext
from .dialogfile import MARKER, Message
from .errors import JournalError
from .layout import archive_names_in

MAX_KEY = 255
RECENT_ARCHIVES = 3
# Bounds on what is remembered, so no table grows with every user ever seen.
MAX_USERS = 100_000
MAX_ARCHIVES = 20_000
# RFC 8941 sf-string ("..." with \" and \\ escapes) or the bare key; visible ASCII only.
_BARE = re.compile(r"[\x21-\x7e]{1,255}")
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')


class BadKey(ValueError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def parse_key(header: str) -> str:
    """The key of an ``Idempotency-Key`` header value; :class:`BadKey` with a sentence."""
    value = header.strip()
    quoted = _SF_STRING.fullmatch(value)
    if quoted is not None:
        value = re.sub(r"\\(.)", r"\1", quoted.group(1))
    elif value.startswith('"'):
        raise BadKey("The Idempotency-Key is a quoted string that is not closed or escapes badly.")
    if not value or len(value) > MAX_KEY or (quoted is None and not _BARE.fullmatch(value)):
        raise BadKey(
            f"The Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters "
            '(a UUID is a good one), bare or as a "quoted string".'
        )
    return value


@dataclass(frozen=True)
class Found:
    """A key's first chat: its user entry, and the entry that answered it, if any."""

    dialog: str
    asked: Message
    answer: Message | None  # the assistant or error entry right after it
    archive: str | None  # the archive it was found in; None: the current dialog
    last: bool  # the user entry is the dialog's last one (its answer may be coming)


class Repeated(Exception):
    """The key was used before by this user: nothing was journaled."""

    def __init__(self, found: Found) -> None:
        super().__init__(found.asked.key)
        self.found = found


@dataclass
class _Current:
    dialog: str
    size: int  # bytes of the journal read, marker included
    keys: dict[str, int] = field(default_factory=dict)  # key -> seq of its user entry


@dataclass
class _Listing:
    mtime_ns: int
    newest: list[str]


class KeyIndex:
    """Per user: the keys of the current dialog and of the newest archives.

    Called from the journal's worker threads, always under the user's ``flock`` (one
    thread per user at a time); different users touch different entries.
    """

    def __init__(self, recent_archives: int = RECENT_ARCHIVES) -> None:
        self.recent_archives = recent_archives
        self._current: dict[str, _Current] = {}
        self._listings: dict[str, _Listing] = {}
        self._archives: dict[tuple[str, str], dict[str, int]] = {}

    def lookup(
        self, user: str, fd: int, size: int, dialog: str | None, key: str, archived: Path
    ) -> Found | None:
        """The first chat with ``key`` (current journal ``fd`` of ``size`` bytes, or the
        newest archives), or None if the key is new."""
        if dialog is not None:
            seq = self._refresh(user, fd, size, dialog).keys.get(key)
            if seq is not None:
                return _found_in(os.pread(fd, size, 0), seq, None)
        return self._in_archives(user, archived, key)

    def noted(self, user: str, dialog: str, old_size: int, new_size: int, message: Message) -> None:
        """An append of ``message`` grew the journal from ``old_size`` to ``new_size``."""
        current = self._current.get(user)
        if old_size == 0:
            current = self._remember(user, _Current(dialog, new_size))
        elif current is None or current.dialog != dialog or current.size != old_size:
            return  # not in step (another process appended): the next lookup reads it
        current.size = new_size
        if message.key is not None:
            current.keys[message.key] = message.seq

    def _remember(self, user: str, current: _Current) -> _Current:
        if user not in self._current and len(self._current) >= MAX_USERS:
            del self._current[next(iter(self._current))]
        self._current[user] = current
        return current

    def _refresh(self, user: str, fd: int, size: int, dialog: str) -> _Current:
        current = self._current.get(user)
        if current is None or current.dialog != dialog or current.size > size:
            current = self._remember(user, _Current(dialog, len(MARKER)))
            start = 0
        else:
            start = current.size - len(MARKER)  # where the next entry was written
        end = size - len(MARKER)
        if end > start:
            current.keys.update(_keys_in(fd, start, end))
        current.size = size
        return current

    def _in_archives(self, user: str, archived: Path, key: str) -> Found | None:
        for name in self._newest(user, archived):
            keys = self._keys_of_archive(user, archived / name)
            if key in keys:
                try:
                    return _found_in((archived / name).read_bytes(), keys[key], name)
                except (OSError, JournalError):
                    return None
        return None

    def _newest(self, user: str, archived: Path) -> list[str]:
        try:
            mtime = os.stat(archived).st_mtime_ns
        except FileNotFoundError:
            return []
        listing = self._listings.get(user)
        if listing is None or listing.mtime_ns != mtime:
            if user not in self._listings and len(self._listings) >= MAX_USERS:
                del self._listings[next(iter(self._listings))]
            newest = archive_names_in(archived)[: self.recent_archives]
            listing = self._listings[user] = _Listing(mtime, newest)
        return listing.newest

    def _keys_of_archive(self, user: str, path: Path) -> dict[str, int]:
        cached = self._archives.get((user, path.name))
        if cached is not None:
            return cached
        try:
            messages = fmt.parse_dialog(path.read_bytes()).messages
        except (OSError, JournalError):
            return {}  # unreadable or damaged: it holds no key we can answer from
        keys = {m.key: m.seq for m in messages if m.key is not None}
        if len(self._archives) >= MAX_ARCHIVES:
            del self._archives[next(iter(self._archives))]
        self._archives[(user, path.name)] = keys
        return keys


def _keys_in(fd: int, start: int, end: int) -> dict[str, int]:
    """The keys of the user entries in the journal's bytes ``start:end`` (whole entries,
    or the header and whole entries)."""
    data = os.pread(fd, end - start, start)
    try:
        _, entries = yamltext.parse_document(data.decode("utf-8"))
        messages = [fmt.message_from_fields(e) for e in entries]
    except (UnicodeDecodeError, yamltext.ParseError):
        # Not in our shape: read the whole journal the general way (rare).
        messages = fmt.parse_dialog(os.pread(fd, end, 0)).messages
    return {m.key: m.seq for m in messages if m.key is not None}


def _found_in(data: bytes, seq: int, archive: str | None) -> Found | None:
    dialog = fmt.parse_dialog(data)
    by_seq = {m.seq: m for m in dialog.messages}
    asked = by_seq.get(seq)
    if asked is None:
        return None
    answer = by_seq.get(seq + 1)
    if answer is not None and answer.role == "user":
        answer = None
    last = seq == max(by_seq)
    return Found(dialog.dialog, asked, answer, archive, last)
