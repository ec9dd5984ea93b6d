"""One page of an indexed search, window by window, in :mod:`archiver.ranking`'s order.

A window is the first ``WINDOW`` rows of one walk down the rowids from the window's
newest (FTS5 walks a ``MATCH`` in descending rowid order; SQLite stops at the limit), each
scored with ``bm25`` and joined to its archive on the way, then sorted here. A page that
reaches a window's end goes on into the next older window. The cursor names a window by
its newest rowid and how many of its hits were given, so archives indexed after the first
page (newer rowids) do not shift the pages that follow.

A hit's text is read back from the archive file (at the byte offset of its entry).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import yamltext
from .archives import FILE_ERRORS
from .dialogfile import Message, parse_dialog, parse_entry
from .layout import Layout, user_dir_name, user_from_dir_name
from .query import Hit, Search

_CURSOR = re.compile(r"([0-9]{1,19})\.([0-9]{1,12})")
_JOINS = "JOIN msgs m ON m.id = fts.rowid JOIN files f ON f.id = m.file"


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: the window whose newest match is at rowid ``top`` or below,
    after its first ``skip`` hits."""

    top: int
    skip: int = 0

    def text(self) -> str:
        return f"{self.top}.{self.skip}"

    @classmethod
    def read(cls, text: str) -> Cursor | None:
        """The cursor ``text`` names, or None if it is not one."""
        match = _CURSOR.fullmatch(text)
        if match is None or int(match.group(1)) >= 2**63:
            return None
        return cls(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class Page:
    hits: list[Hit]
    next: Cursor | None  # where the next page starts, None if this is the last


def clauses(pairs: Iterable[tuple[str, object | None]]) -> tuple[list[str], list[object]]:
    """The ``AND column = ?`` clauses (and their arguments) of the pairs with a value."""
    sql: list[str] = []
    args: list[object] = []
    for clause, value in pairs:
        if value is not None:
            sql.append(clause)
            args.append(value)
    return sql, args


# A character no token of a text or a query holds (query.tokens keeps letters, digits
# and combining accents only) but the ascii tokenizer keeps in a token (every non-ASCII
# character is a token character there): no word nor prefix can match an owner token.
OWNER_MARK = "\u00a7"  # §


def owner_token(udir: str) -> str:
    """The ``owner`` column of a user directory's rows: one token, a different one for
    every directory (its name's bytes in hex)."""
    return OWNER_MARK + udir.encode("utf-8").hex()


def fts_insert(db: sqlite3.Connection, udir: str, ids: Iterable[int], bodies: list[str]) -> None:
    """Index an archive's message bodies under rowids ``ids``, with their owner token."""
    owner = owner_token(udir)
    db.executemany(
        "INSERT INTO fts(rowid, body, owner) VALUES (?, ?, ?)",
        ((i, body, owner) for i, body in zip(ids, bodies, strict=True)),
    )


def fts_delete(db: sqlite3.Connection, udir: str, ids: Iterable[int], bodies: list[str]) -> None:
    """Take those rows out again: a contentless table is told each row's exact text."""
    owner = owner_token(udir)
    db.executemany(
        "INSERT INTO fts(fts, rowid, body, owner) VALUES ('delete', ?, ?, ?)",
        ((i, body, owner) for i, body in zip(ids, bodies, strict=True)),
    )


def match_text(search: Search) -> str:
    """The ``MATCH`` of a search: its terms, and for a user's search that user's owner
    token, so FTS5 walks only that user's rows (the ``f.udir`` filter stays)."""
    if search.user is None:
        return search.fts()
    return f'{search.fts()} AND "{owner_token(user_dir_name(search.user))}"'


def _filters(search: Search) -> tuple[list[str], list[object]]:
    return clauses(
        (
            ("AND f.udir = ?", None if search.user is None else user_dir_name(search.user)),
            ("AND m.role = ?", search.role),
            ("AND f.reason = ?", search.reason),
            ("AND f.ended >= ?", search.since),
            ("AND f.ended < ?", search.before),
        )
    )


def page(
    db: sqlite3.Connection,
    layout: Layout,
    search: Search,
    limit: int | None,
    cursor: Cursor | None,
    window: int,
) -> Page:
    """Up to ``limit`` hits from ``cursor`` (None: the first page; ``limit`` None: all)."""
    filters, args = _filters(search)
    # One walk down the rowids per window, scoring and joining only the window's rows
    # (a filter is judged on the way, so a window holds ``window`` rows that pass it).
    sql = (
        f"SELECT fts.rowid, bm25(fts, 1.0, 0.0), {_COLUMNS} FROM fts {_JOINS}"
        f" WHERE fts MATCH ? {' '.join(filters)} AND fts.rowid <= ?"
        " ORDER BY fts.rowid DESC LIMIT ?"
    )
    if cursor is None:
        newest = db.execute("SELECT max(id) FROM msgs").fetchone()[0]
        cursor = Cursor(0 if newest is None else int(newest))
    wanted = None if limit is None else limit + 1  # one more: is there a next page?
    match = match_text(search)
    found: list[tuple[_Row, Cursor]] = []
    top, skip = cursor.top, cursor.skip
    while wanted is None or len(found) < wanted:
        rows = db.execute(sql, [match, *args, top, window]).fetchall()
        ranked = _best_first(rows)
        end = len(ranked) if wanted is None else skip + wanted - len(found)
        found.extend((r[2:], Cursor(top, skip + i)) for i, r in enumerate(ranked[skip:end], 0))
        if len(rows) < window:
            break  # the last window
        top, skip = int(rows[-1][0]) - 1, 0
    more = limit is not None and len(found) > limit
    kept = found[:limit] if limit is not None else found
    hits = [hit for r, _ in kept if (hit := _hit(layout, search, r)) is not None]
    return Page(hits, found[limit][1] if more and limit is not None else None)


_COLUMNS = "f.ended, f.name, f.udir, m.seq, f.dialog, m.pos, m.len"
_Row = tuple[Any, ...]  # rowid, bm25, then _COLUMNS


def _best_first(rows: list[_Row]) -> list[_Row]:
    """ranking.py's order within a window: bm25, then the newer archive, then seq (stable
    sorts, the last key first, as ranking.ordered sorts the scan's)."""
    out = sorted(rows, key=lambda r: r[5])  # seq
    out.sort(key=lambda r: (r[2], r[3], r[4]), reverse=True)  # ended, name, udir
    out.sort(key=lambda r: r[1])  # bm25
    return out


def _hit(layout: Layout, search: Search, row: _Row) -> Hit | None:
    _ended, name, udir, seq, dialog, pos, length = row
    assert isinstance(udir, str) and isinstance(name, str) and isinstance(dialog, str)
    assert isinstance(seq, int) and isinstance(pos, int) and isinstance(length, int)
    path = Path(layout.archived_dir_named(udir), name)
    try:
        message = _message_at(path, seq, pos, length)
    except FILE_ERRORS:
        return None  # changed or gone since it was indexed: the next sync fixes the row
    if message is None:
        return None
    return Hit(user_from_dir_name(udir), name, dialog, message, search.spans(message.text))


def _message_at(path: Path, seq: int, pos: int, length: int) -> Message | None:
    if pos >= 0:
        with open(path, "rb") as fh:
            fh.seek(pos)
            entry = fh.read(length)
        with contextlib.suppress(yamltext.ParseError, UnicodeDecodeError, KeyError, ValueError):
            message = parse_entry(entry)
            if message.seq == seq:
                return message
    dialog = parse_dialog(path.read_bytes())
    return next((m for m in dialog.messages if m.seq == seq), None)
