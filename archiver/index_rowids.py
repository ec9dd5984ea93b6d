"""Where the index puts an archive's messages: rowids in recency order, always.

Search windows (:mod:`archiver.ranking`) take a query's newest matches as its highest
FTS5 rowids, so rowid order must be recency order (``ranking.archive_key``, then seq)
however the archives reach the index: a rebuild, a catch-up that lists user directories
one by one, an import of old archives, two processes indexing at once. Each archive gets
a contiguous range of rowids (``files.first`` .. ``files.last``) between the ranges of the
archives just older and just newer than it:

* the newest archive goes after the last range, :data:`GAP` rowids further on, so a late
  archive that lands between two others usually finds room there;
* one that does not fit moves the newer archives up, as few as it takes: each moved one
  keeps half a gap before it, so the gaps after them absorb the shift (each move is
  FTS5 deletes and inserts of that archive's rows, with the tokens ``files.tokens`` kept).
  Many late archives into one stretch still move more each time (this is no balanced
  relabeling); a rebuild lays every gap out again;
* a rebuild and a sync store archives sorted by (name, user) first, close to recency
  order, so they seldom move anything.

Rowids stay dense apart from the gaps: FTS5 stores each row's rowid as a varint delta from
the previous one, so rowids derived from times (sparse) would make the index far bigger.
"""

from __future__ import annotations

import sqlite3
import zlib

from .index_search import fts_delete, fts_insert

GAP = 32  # free rowids left before each archive appended at the newest end

_OLDER = (
    "SELECT last FROM files WHERE last IS NOT NULL AND (ended, name, udir) < (?, ?, ?)"
    " ORDER BY ended DESC, name DESC, udir DESC LIMIT 1"
)
_NEWER = (
    "SELECT id, first, last, tokens, udir FROM files"
    " WHERE first IS NOT NULL AND (ended, name, udir) > (?, ?, ?) ORDER BY ended, name, udir"
)


def place(db: sqlite3.Connection, key: tuple[str, str, str], count: int) -> int:
    """The first of ``count`` free rowids for the archive of ``key`` (whose own rows are
    already dropped), between its older and newer neighbours; newer archives are moved
    up when the space between is too small. Inside the caller's write transaction."""
    row = db.execute(_OLDER, key).fetchone()
    start = (row[0] if row is not None else 0) + 1
    newer = db.execute(_NEWER.replace("tokens", "NULL") + " LIMIT 1", key).fetchone()
    if newer is None:
        return start + GAP
    if newer[1] - start >= count:
        return start
    _move_up(db, key, start + count)
    return start


def _move_up(db: sqlite3.Connection, key: tuple[str, str, str], need: int) -> None:
    """Move the archives newer than ``key`` whose range starts below ``need`` (each one
    pushing ``need`` past itself), the newest first so no range lands on another."""
    moves: list[tuple[int, int, int, bytes, str, int]] = []
    newer = db.execute(_NEWER, key)
    for file_id, first, last, packed, udir in newer:
        if first >= need:
            break
        moves.append((file_id, first, last, packed, udir, need))
        # Half a gap before the next: each archive further on absorbs half a gap of the
        # shift, so a move pushes on about 2 * count / GAP archives, and a moved archive
        # still has room before it (packed ones would make the next move go through all).
        need += last - first + 1 + GAP // 2
    newer.close()  # before writing the rows it reads
    for file_id, first, last, packed, udir, to in reversed(moves):
        bodies = zlib.decompress(packed).decode("utf-8").split("\n")
        fts_delete(db, udir, range(first, last + 1), bodies)
        # Through negative ids: an UPDATE checks the key row by row, and a shift smaller
        # than the range would meet the archive's own rows.
        db.execute("UPDATE msgs SET id = -id WHERE id BETWEEN ? AND ?", (first, last))
        db.execute(
            "UPDATE msgs SET id = ? - id WHERE id BETWEEN ? AND ?", (to - first, -last, -first)
        )
        db.execute(
            "UPDATE files SET first = ?, last = ? WHERE id = ?",
            (to, to + last - first, file_id),
        )
        fts_insert(db, udir, range(to, to + last - first + 1), bodies)
