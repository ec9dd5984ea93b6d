"""The full-text index: SQLite FTS5, derived from the archive files, never their master.

The files are the truth. The index is a cache of them (``<data>/.index/search.sqlite3``
unless ``ARCHIVER_INDEX_PATH`` says otherwise): deleting it loses nothing, and
:meth:`Index.sync` or ``archiver reindex`` rebuilds it. A hit's text is read back from
the archive file (at the byte offset of its entry), so the index holds no copy of it,
only the tokens (:func:`archiver.query.index_text`) FTS5 needs to find and delete rows.

How it stays current:

* ``files`` records each indexed archive with the ``(size, mtime_ns)`` it had; ``dirs``
  records each ``archived/`` directory's ``mtime_ns``. :meth:`Index.sync` lists only the
  directories whose mtime moved (an archive lands by a rename, which moves it; a deletion
  too) and (re)indexes the files whose size or mtime differ, dropping the rows of files
  that are gone; ``full=True`` looks at every directory (start-up, ``reindex``). A
  directory changed in the last second is not recorded as seen: its mtime can still
  hide a rename in the same clock tick (git's "racily clean" problem).
* :meth:`Index.update` reconciles named files (an archive that just landed or was
  deleted), which the server does from a worker thread in batches
  (:class:`archiver.indexer.Indexer`), as do the CLI commands that archive or delete.
* Several processes may update it at once: WAL, a busy timeout, and every write in one
  ``BEGIN IMMEDIATE`` transaction per batch; files are read and parsed outside it.
* A crash between an archive's rename and its index row leaves the directory's mtime
  unrecorded (or newer than recorded), so the next sync finds the file.

Search (:mod:`archiver.index_search`): one FTS5 ``MATCH`` (every term quoted, so no query
can inject FTS syntax), joined to the archive's metadata for the filters, in
:mod:`archiver.ranking`'s order (``bm25`` then recency, within windows of the newest
matches), which needs rowids in recency order (:mod:`archiver.index_rowids` keeps them
so); a user's search also matches that user's owner token (in a column of its own:
:func:`archiver.index_search.owner_token`), so FTS5 walks only their rows.
``archiver list`` reads the ``listing`` table (:mod:`archiver.index_listing`).
``PRAGMA secure_delete`` overwrites deleted rows, so a forgotten user's words do not
linger in free pages.

Do not put the index on NFS: SQLite's locking is not safe there (see the README).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from . import index_search
from .archives import Filter, OnError
from .index_listing import Row, listing_key, listing_rows
from .index_read import Parsed, parse, parse_forked
from .index_rowids import place
from .index_search import Cursor, Page, fts_delete, fts_insert
from .layout import ARCHIVE_NAME, Layout, index_path, user_dir_name, user_from_dir_name
from .query import Search
from .ranking import WINDOW, archive_key
from .stats import StatArchive, StatMessage

_T = TypeVar("_T")

# Bump when the schema or query.tokens() changes: an index of another version is rebuilt.
SCHEMA_VERSION = "8"  # 8: an owner column in fts (7: the listing table)
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process's transaction
BATCH_FILES = 500  # files per write transaction
RACY_NS = 1_000_000_000  # a directory changed this recently is looked at again next time
MAX_LIMIT = 500
FREE_PAGES = ("freelist_count", "page_count")

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE dirs(udir TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL);
CREATE TABLE files(
    id INTEGER PRIMARY KEY,
    udir TEXT NOT NULL,
    name TEXT NOT NULL,
    dialog TEXT NOT NULL,
    ended TEXT NOT NULL,
    reason TEXT,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    error TEXT,  -- why a file could not be read as a dialog (then it has no messages)
    l_time TEXT NOT NULL,  -- its listing row's time (the first of that row's key)
    first INTEGER, last INTEGER,  -- its messages' rowids, first..last (NULL: it has none)
    tokens BLOB NOT NULL,  -- last: reading the columns before it skips its overflow pages
    UNIQUE(udir, name)
);
CREATE TABLE msgs(
    id INTEGER PRIMARY KEY,
    file INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    pos INTEGER NOT NULL,
    len INTEGER NOT NULL,
    at INTEGER,  -- the message time in ms since the epoch (for stats), NULL if unreadable
    interrupted INTEGER NOT NULL DEFAULT 0,
    upstream TEXT,  -- the entry's upstream and first_token_ms (NULL when it has none)
    first_token_ms INTEGER
);
-- No index on msgs(file): an archive's messages are the rowids files.first..files.last.
-- ranking.archive_key's order, with the rowid ranges (index_rowids.place reads only it)
CREATE INDEX files_recency ON files(ended, name, udir, first, last);
-- Every search lists the damaged archives (a warning each): not a scan of every row.
CREATE INDEX files_damaged ON files(udir, name, error) WHERE error IS NOT NULL;
-- `archiver list` (index_listing): what it shows of each archive, read from the file's
-- two ends as the file listing reads them (dialogfile.summary_of), keyed in its order
-- (archives.newest_first): the time it sorts by (the trailer's ended, else the name's),
-- the name's (stamp, collision number) as one text, the decoded user. messages NULL:
-- those ends could not be read (the listing reads them again).
CREATE TABLE listing(
    l_time TEXT NOT NULL, l_order TEXT NOT NULL, user TEXT NOT NULL, name TEXT NOT NULL,
    udir TEXT NOT NULL,
    dialog TEXT, started TEXT, ended TEXT, reason TEXT, messages INTEGER,
    PRIMARY KEY (l_time, l_order, user, name, udir)
) WITHOUT ROWID;
CREATE INDEX listing_unread ON listing(user, name) WHERE messages IS NULL;
-- owner: one token per user directory (index_search.owner_token), weight 0 in bm25, so a
-- user's search intersects the word's rows with that user's inside FTS5.
CREATE VIRTUAL TABLE fts USING fts5(body, owner, content='', tokenize='ascii');
"""
_TABLES = ("meta", "dirs", "files", "msgs", "listing", "fts")


@dataclass(frozen=True)
class Synced:
    """What one sync or update did."""

    indexed: int = 0  # files (re)indexed
    removed: int = 0  # files whose rows were dropped
    seen: int = 0  # files looked at
    ms: float = 0.0


def _use_wal(db: sqlite3.Connection) -> None:
    """Put the database in WAL mode (it stays so, in the file). Switching takes a lock that
    SQLite's busy timeout does not wait for, so a connection that finds it WAL already
    (the common case) does not ask again, and one racing another's switch tries again."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class Index:
    """One SQLite database; a connection per thread (sqlite3 objects are per thread)."""

    def __init__(self, data_dir: Path, path: Path | None = None, window: int = WINDOW) -> None:
        self.data_dir = data_dir
        self.window = window  # matches per ranking window (tests use a small one)
        self.layout = Layout(data_dir)
        self.users_dir = self.layout.users_dir
        self.path = index_path(data_dir, path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    # -- connections ----------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.is_file()

    def has_this_schema(self) -> bool:
        """Whether the file holds this version's schema, asked read-only: opening an index
        of another version rebuilds it, which a listing should not wait for."""
        try:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)) as db:
                row = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        except sqlite3.Error:
            return False
        return row is not None and row[0] == SCHEMA_VERSION

    def open(self) -> None:
        """Create the database (or check its version) now, in this thread."""
        self._db()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            _use_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")  # derived data: a lost commit is re-synced
            db.execute("PRAGMA secure_delete=ON")
            db.execute("PRAGMA journal_size_limit=8388608")  # a build's WAL shrinks back
            self._ensure_schema(db)
            self._local.db = db
            with self._guard:
                self._connections.append(db)
        return db

    def close(self) -> None:
        with self._guard:
            for db in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._connections.clear()
        self._local = threading.local()

    @staticmethod
    def _ensure_schema(db: sqlite3.Connection) -> None:
        with _write(db):
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" in tables:
                row = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
                if row is not None and row[0] == SCHEMA_VERSION:
                    return
            for table in _TABLES:  # another version, or a half-made one: start again
                db.execute(f"DROP TABLE IF EXISTS {table}")
            # One statement at a time: executescript() would COMMIT our transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('version', ?)", (SCHEMA_VERSION,))

    # -- keeping current ------------------------------------------------------------

    def sync(self, full: bool = False) -> Synced:
        """Catch up with the files: every directory whose mtime moved (all with ``full``).
        The changed files of every directory are stored together, sorted by name (close to
        recency order: see :mod:`archiver.index_rowids`); a directory's mtime is recorded
        only once its files are stored and its vanished ones dropped."""
        started = time.monotonic()
        db = self._db()
        known = dict(db.execute("SELECT udir, mtime_ns FROM dirs").fetchall())
        try:
            on_disk = os.listdir(self.users_dir)
        except FileNotFoundError:
            on_disk = []
        totals = [0, 0, 0]
        for udir in set(known) - set(on_disk):  # a user forgotten: drop everything of theirs
            totals[1] += self._drop_dir(db, udir)
        now = time.time_ns()
        stale: list[tuple[str, str, str]] = []  # (name, udir, directory)
        settle: list[tuple[str, list[str], int]] = []  # (udir, gone, mtime to record)
        for udir in sorted(on_disk):
            directory = self.layout.archived_dir_named(udir)
            try:
                mtime = os.stat(directory).st_mtime_ns
            except (FileNotFoundError, NotADirectoryError):
                if udir in known:
                    totals[1] += self._drop_dir(db, udir)
                continue
            if not full and known.get(udir) == mtime:
                continue
            seen = -1 if now - mtime < RACY_NS else mtime
            changed, gone, files = self._look(db, udir, directory)
            totals[2] += files
            stale.extend((name, udir, directory) for name in changed)
            if changed or gone or known.get(udir) != seen:
                settle.append((udir, gone, seen))
        stale.sort()
        for batch in _chunks(stale, BATCH_FILES):
            parsed = [p for n, u, d in batch if (p := parse(u, Path(d) / n)) is not None]
            with _write(db):
                for item in _in_recency_order(parsed):
                    _store(db, item)
        for udir, gone, seen in settle:
            with _write(db):
                for name in gone:
                    _drop(db, udir, name)
                db.execute("INSERT OR REPLACE INTO dirs VALUES (?, ?)", (udir, seen))
        totals[0] += len(stale)
        totals[1] += sum(len(gone) for _, gone, _ in settle)
        ms = (time.monotonic() - started) * 1000
        return Synced(totals[0], totals[1], totals[2], ms)

    def _archived_dirs(self) -> Iterator[tuple[str, str]]:
        with contextlib.suppress(FileNotFoundError):
            for udir in sorted(os.listdir(self.users_dir)):
                yield udir, self.layout.archived_dir_named(udir)

    @staticmethod
    def _look(
        db: sqlite3.Connection, udir: str, directory: str
    ) -> tuple[list[str], list[str], int]:
        """(files changed since indexed, indexed files gone, files there) of a directory."""
        stats: dict[str, tuple[int, int]] = {}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(directory):
                if ARCHIVE_NAME.match(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        stats[entry.name] = (st.st_size, st.st_mtime_ns)
        rows = db.execute("SELECT name, size, mtime_ns FROM files WHERE udir=?", (udir,))
        indexed = {name: (size, mtime_ns) for name, size, mtime_ns in rows}
        stale = [n for n, st in stats.items() if indexed.get(n) != st]
        gone = [n for n in indexed if n not in stats]
        return stale, gone, len(stats)

    @staticmethod
    def _drop_dir(db: sqlite3.Connection, udir: str) -> int:
        with _write(db):
            names = [r[0] for r in db.execute("SELECT name FROM files WHERE udir=?", (udir,))]
            for name in names:
                _drop(db, udir, name)
            db.execute("DELETE FROM dirs WHERE udir=?", (udir,))
        return len(names)

    def update(self, paths: Iterable[Path | str]) -> Synced:
        """Reconcile these archive files: index the ones that are there (if changed), drop
        the rows of the ones that are not. One transaction for all of them."""
        started = time.monotonic()
        db = self._db()
        parsed: list[Parsed] = []
        missing: list[tuple[str, str]] = []
        for raw in paths:
            path = Path(raw)
            user = self.layout.archive_of(path)
            if user is None:
                continue
            udir = user_dir_name(user)
            item = parse(udir, path)
            if item is None:
                missing.append((udir, path.name))
            else:
                parsed.append(item)
        with _write(db):
            for item in _in_recency_order(parsed):
                _store(db, item)
            for udir, name in missing:
                _drop(db, udir, name)
        ms = (time.monotonic() - started) * 1000
        return Synced(len(parsed), len(missing), len(parsed) + len(missing), ms)

    def forget_user(self, user: str) -> int:
        """Drop every row of ``user`` (after :func:`archiver.review.forget`)."""
        return self._drop_dir(self._db(), user_dir_name(user))

    def rebuild(self, workers: int = 1) -> Synced:
        """Empty the index and index every archive again (``archiver reindex``). With
        ``workers``, forked processes parse while this one writes (a single-threaded
        caller only); a full sync then records the directories and catches any change."""
        started = time.monotonic()
        db = self._db()
        with _write(db):
            db.execute("INSERT INTO fts(fts) VALUES ('delete-all')")  # contentless: allowed
            for table in ("msgs", "files", "listing", "dirs"):
                db.execute(f"DELETE FROM {table}")
        if workers > 1 and hasattr(os, "fork"):
            # By name, then user: close to recency order, so few rowids move.
            named = [(n, udir, d) for udir, d in self._archived_dirs() for n in _names(d)]
            files = [(udir, Path(d, n)) for n, udir, d in sorted(named)]
            parsed = parse_forked(files, workers, BATCH_FILES)
            while batch := list(itertools.islice(parsed, BATCH_FILES)):
                with _write(db):
                    for item in _in_recency_order(batch):
                        _store(db, item)
        synced = self.sync(full=True)
        synced = dataclasses.replace(synced, ms=(time.monotonic() - started) * 1000)
        with _write(db):
            db.execute("INSERT INTO fts(fts) VALUES ('optimize')")
        # The merge into one segment frees the pages of the segments it read: at 5,000
        # archives a fifth of the file, at 100,000 a fortieth (later writes reuse them).
        free, pages = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in FREE_PAGES)
        if free * 10 > pages:
            db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a build's WAL is as big as the index
        return synced

    def damaged(self, user: str | None = None) -> list[tuple[Path, str]]:
        """Archives that could not be read as dialogs (the scan skips them too), with why."""
        sql = "SELECT udir, name, error FROM files WHERE error IS NOT NULL"
        args: tuple[str, ...] = ()
        if user is not None:
            sql, args = sql + " AND udir = ?", (user_dir_name(user),)
        rows = self._db().execute(sql + " ORDER BY udir, name", args).fetchall()
        return [(Path(self.layout.archived_dir_named(u), n), e) for u, n, e in rows]

    def counts(self) -> tuple[int, int]:
        """(archives, messages) indexed."""
        db = self._db()
        files = db.execute("SELECT count(*) FROM files").fetchone()[0]
        msgs = db.execute("SELECT count(*) FROM msgs").fetchone()[0]
        return int(files), int(msgs)

    def listing(
        self, where: Filter, limit: int | None = None, on_error: OnError | None = None
    ) -> list[Row] | None:
        """What :func:`archiver.archives.list_archives` answers, as rows
        (:mod:`archiver.index_listing`); None if the files must say."""
        return listing_rows(self._db(), self.layout, where, limit, on_error)

    def stat_rows(self, where: Filter) -> Iterator[StatArchive]:
        """Every indexed archive that passes ``where``, with its messages' roles and
        times (what stats.py counts), without reading a file."""
        sql = [
            "SELECT f.id, f.udir, f.ended, f.reason,",
            "m.role, m.at, m.interrupted, m.upstream, m.first_token_ms",
            "FROM files f LEFT JOIN msgs m ON m.id BETWEEN f.first AND f.last",
            "WHERE f.error IS NULL",
        ]
        filters, args = index_search.clauses(
            (
                ("AND f.udir = ?", None if where.user is None else user_dir_name(where.user)),
                ("AND f.reason = ?", where.reason),
                ("AND f.ended >= ?", where.since),
                ("AND f.ended < ?", where.before),
            )
        )
        sql += filters
        sql.append("ORDER BY f.id, m.seq")
        current: StatArchive | None = None
        current_id = None
        for file_id, udir, ended, reason, role, *message in self._db().execute(" ".join(sql), args):
            if file_id != current_id:
                if current is not None:
                    yield current
                current_id = file_id
                current = StatArchive(user_from_dir_name(udir), ended, reason, [])
            if role is not None and current is not None:
                at, interrupted, upstream, first_ms = message
                current.messages.append(
                    StatMessage(role, at, bool(interrupted), upstream, first_ms)
                )
        if current is not None:
            yield current

    # -- searching ------------------------------------------------------------------

    def search(self, search: Search, limit: int | None = 50, cursor: Cursor | None = None) -> Page:
        """One page of hits in :mod:`archiver.ranking`'s order, from ``cursor`` on."""
        return index_search.page(self._db(), self.layout, search, limit, cursor, self.window)


# ---------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def _write(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _store(db: sqlite3.Connection, item: Parsed) -> None:
    """Index one archive. The FTS table is contentless (it keeps no text); deleting a row
    from it needs the tokens it was given, which ``files.tokens`` keeps, compressed. Its
    rowids sit in recency order among the others (:func:`index_rowids.place`)."""
    _drop(db, item.udir, item.name)
    bodies = [row[4] for row in item.rows]
    got = item.summary
    key = listing_key(item.udir, item.name, None if got is None else got.ended)
    count = len(item.rows)
    first = place(db, archive_key(item.ended, item.name, item.udir), count) if count else None
    cursor = db.execute(
        "INSERT INTO files(udir, name, dialog, ended, reason, size, mtime_ns, tokens, error,"
        " first, last, l_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            item.udir,
            item.name,
            item.dialog,
            item.ended,
            item.reason,
            item.size,
            item.mtime_ns,
            zlib.compress("\n".join(bodies).encode("utf-8")),
            item.error,
            first,
            None if first is None else first + count - 1,
            key[0],
        ),
    )
    db.execute(
        "INSERT INTO listing VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            *key,
            item.udir,
            *((None,) * 5 if got is None else (got.dialog, got.started, got.ended, got.reason)),
            *(() if got is None else (got.messages,)),
        ),
    )
    if first is None:
        return
    file_id = cursor.lastrowid
    ids = range(first, first + count)
    db.executemany(
        "INSERT INTO msgs(id, file, seq, role, pos, len, at, interrupted, upstream,"
        " first_token_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(i, file_id, *row[:4], *row[5:]) for i, row in zip(ids, item.rows, strict=True)],
    )
    fts_insert(db, item.udir, ids, bodies)


def _in_recency_order(items: list[Parsed]) -> list[Parsed]:
    """A batch sorted as its rowids will be: each then lands after the one before."""
    return sorted(items, key=lambda p: archive_key(p.ended, p.name, p.udir))


def _drop(db: sqlite3.Connection, udir: str, name: str) -> None:
    row = db.execute(
        "SELECT id, first, last, tokens, l_time FROM files WHERE udir=? AND name=?", (udir, name)
    ).fetchone()
    if row is None:
        return
    file_id, first, last, packed, l_time = row
    key = listing_key(udir, name, l_time)
    db.execute(
        "DELETE FROM listing WHERE l_time=? AND l_order=? AND user=? AND name=? AND udir=?",
        (*key, udir),
    )
    if first is not None:
        bodies = zlib.decompress(packed).decode("utf-8").split("\n")
        fts_delete(db, udir, range(first, last + 1), bodies)
        db.execute("DELETE FROM msgs WHERE id BETWEEN ? AND ?", (first, last))
    db.execute("DELETE FROM files WHERE id = ?", (file_id,))


def _names(directory: str) -> list[str]:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return sorted(n for n in os.listdir(directory) if ARCHIVE_NAME.match(n))
    return []


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
