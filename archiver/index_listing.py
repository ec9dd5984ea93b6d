"""`archiver list` from the index: one walk of one SQL index, in the listing's order.

:func:`archiver.archives.list_archives` (the file listing, the reference) sorts by
:func:`archiver.archives.newest_first`: ``(ended or the name's time, archive_sort_key(name),
user)``, newest first. The ``listing`` table (a row per archive, what the listing shows of
it) is keyed by that order as texts that SQLite compares as Python compares the tuple
(``l_time``; ``l_order``, the name's stamp and its collision number zero-padded; the
decoded ``user``), so a listing reads that table backwards and sorts nothing, nor reads
``files`` (whose rows hold the archive's tokens). The filters are the listing's, in SQL:
the time bounds on ``l_time``, the reason, and ``Filter.too_old`` on the name.

The rows whose two ends could not be read (``messages`` NULL) are read again from
their files, as the file listing reads them; in the rare case one reads now, the whole
listing is sorted here with ``newest_first`` itself. A user directory whose name is not
its user's own encoding (made by hand: ``user_dir_name(user_from_dir_name(d)) != d``)
is listed by the files, whose answer for it this index does not reproduce.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .archives import ArchiveInfo, Filter, OnError, name_time, newest_first, read_info
from .index_search import clauses
from .layout import Layout, archive_sort_key, user_dir_name, user_from_dir_name

# What the listing shows of an archive: user, name, dialog, started, ended, reason, messages.
Row = tuple[str, str, str, str, str | None, str | None, int]

_COLUMNS = "user, name, dialog, started, ended, reason, messages"
# Filter.too_old in SQL: the time a name records (archives.name_time with 999 ms).
_NAME_TIME = "substr(name, 1, 10) || 'T' || replace(substr(name, 12, 8), '-', ':') || '.999Z'"


def listing_key(udir: str, name: str, ended: str | None) -> tuple[str, str, str, str]:
    """``(l_time, l_order, user, name)`` of an archive: ``ended`` is its trailer's as the
    file's ends give it (None: none), or the key's own ``l_time``, which it then keeps."""
    stamp, number = archive_sort_key(name)
    return ended or name_time(name), f"{stamp}-{number:06d}", user_from_dir_name(udir), name


def canonical(layout: Layout) -> bool:
    """Whether every user directory is named as ``user_dir_name`` names its user."""
    try:
        names = os.listdir(layout.users_dir)
    except FileNotFoundError:
        return True
    for name in names:
        try:
            if user_dir_name(user_from_dir_name(name)) != name:
                return False
        except ValueError:  # BadUserId: empty or too long once decoded
            return False
    return True


def listing_rows(
    db: sqlite3.Connection,
    layout: Layout,
    where: Filter,
    limit: int | None = None,
    on_error: OnError | None = None,
) -> list[Row] | None:
    """What ``list_archives(where=where, limit=limit)`` lists, as rows; None if this
    index cannot say (a hand-made user directory name: see the module's text)."""
    if not canonical(layout):
        return None
    sql = [f"SELECT {_COLUMNS} FROM listing WHERE messages IS NOT NULL"]
    filters, args = clauses(
        (
            ("AND user = ?", where.user),
            ("AND reason = ?", where.reason),
            ("AND l_time >= ?", where.since),
            ("AND l_time < ?", where.before),
            (f"AND {_NAME_TIME} >= ?", where.since),
        )
    )
    sql += filters
    unread = _read_again(db, layout, where, on_error)
    # The whole key, backwards: the table's order. Past the listing's three, only X.yaml
    # and X-1.yaml of one user tie (the file listing gives those in the directory's order).
    sql.append("ORDER BY l_time DESC, l_order DESC, user DESC, name DESC, udir DESC")
    if limit is not None and not unread:
        sql.append("LIMIT ?")
        args.append(limit)
    rows: list[Row] = db.execute(" ".join(sql), args).fetchall()
    if unread:  # seldom: a file whose ends could not be read when indexed reads now
        infos = newest_first([ArchiveInfo(*row) for row in rows] + unread)
        rows = [row_of(info) for info in infos[:limit]]
    return rows


def _read_again(
    db: sqlite3.Connection, layout: Layout, where: Filter, on_error: OnError | None
) -> list[ArchiveInfo]:
    """The rows without a summary, read from their files in the file listing's order
    (so ``on_error`` hears of them in the same order); those that read and pass."""
    sql = "SELECT user, udir, name FROM listing INDEXED BY listing_unread WHERE messages IS NULL"
    found = db.execute(sql).fetchall()
    found.sort(key=lambda r: archive_sort_key(r[2]), reverse=True)
    found.sort(key=lambda r: r[0])
    out = []
    for user, udir, name in found:
        if (where.user is not None and user != where.user) or where.too_old(name):
            continue
        info = read_info(user, Path(layout.archived_dir_named(udir), name), on_error)
        if info is not None and where.wants(info):
            out.append(info)
    return out


def row_of(info: ArchiveInfo) -> Row:
    """What the listing shows of ``info`` (the file listing's answer, as rows)."""
    return (info.user, info.name, info.dialog, info.started, info.ended, info.reason, info.messages)
