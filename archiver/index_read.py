"""What the index reads of one archive file: its rows, and what the listing shows.

Read and parsed outside any write transaction (:mod:`archiver.index` writes them); with
:func:`parse_forked`, in forked processes (``archiver reindex`` only).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .archives import FILE_ERRORS, name_time
from .dialogfile import TAIL_READ, Dialog, Message, Summary, read_with_offsets, summary_of
from .errors import JournalError
from .query import index_text
from .stats import stamp_ms

SQLITE_MAX_INT = 2**63

# seq role pos len body at interrupted upstream first_token_ms
Row = tuple[int, str, int, int, str, int | None, int, str | None, int | None]


@dataclass(frozen=True)
class Parsed:
    """One archive read from disk, ready to be written (outside any transaction)."""

    udir: str
    name: str
    size: int
    mtime_ns: int
    dialog: str
    ended: str
    reason: str | None
    rows: list[Row]
    error: str | None = None
    summary: Summary | None = None


def parse(udir: str, path: Path) -> Parsed | None:
    """The archive at ``path`` as rows; None if it is gone. A file that cannot be read as
    a dialog is recorded with no messages, as the scan skips it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        data = _read_all(fd)
        summary = _summary(fd, data, path.name)
    finally:
        os.close(fd)
    try:
        dialog, offsets = read_with_offsets(data)
    except FILE_ERRORS as exc:
        error = exc.detail if isinstance(exc, JournalError) else str(exc)
        ended = name_time(path.name)
        return Parsed(
            udir, path.name, st.st_size, st.st_mtime_ns, "", ended, None, [], error, summary
        )
    ended = dialog.ended or name_time(path.name)
    unstorable = _unstorable(dialog.messages)
    if unstorable is not None:
        # A file edited by hand: SQLite cannot hold such a number (an OverflowError once).
        return Parsed(
            udir, path.name, st.st_size, st.st_mtime_ns, "", ended, None, [], unstorable, summary
        )
    return Parsed(
        udir,
        path.name,
        st.st_size,
        st.st_mtime_ns,
        dialog.dialog,
        ended,
        dialog.reason,
        _rows(dialog, offsets),
        None,
        summary,
    )


def _summary(fd: int, data: bytes, name: str) -> Summary | None:
    """What the listing reads of this file (the same function, on the same bytes)."""
    try:
        found = summary_of(fd, data[-TAIL_READ:], name)
    except JournalError:
        return None
    return found if 0 <= found.messages < SQLITE_MAX_INT else None  # else: read again


def _unstorable(messages: list[Message]) -> str | None:
    if not all(0 <= m.seq < SQLITE_MAX_INT for m in messages):
        return "a message seq is out of range"
    firsts = [m.first_token_ms for m in messages if m.first_token_ms is not None]
    if not all(-SQLITE_MAX_INT <= f < SQLITE_MAX_INT for f in firsts):
        return "a message first_token_ms is out of range"
    return None


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _rows(dialog: Dialog, offsets: list[tuple[int, int]] | None) -> list[Row]:
    out: list[Row] = []
    for i, m in enumerate(dialog.messages):
        pos, length = offsets[i] if offsets is not None else (-1, 0)
        at = stamp_ms(m.at)
        body = index_text(m.text)
        extra = (m.upstream, m.first_token_ms)
        out.append((m.seq, m.role, pos, length, body, at, int(m.interrupted), *extra))
    return out


# Divergence #10 again: os.fork and pipes (CLI only), as search.py's scan does.
def parse_forked(files: list[tuple[str, Path]], workers: int, batch: int) -> Iterator[Parsed]:
    """:func:`parse` of every file, in order, by ``workers`` forked children (each takes
    every ``workers``-th batch and streams it back pickled) while this process consumes
    them: the build's writer then seldom waits for the parsing. Only for a
    single-threaded caller (``archiver reindex``): a fork copies no other thread."""
    children: list[tuple[int, BinaryIO]] = []
    try:
        for share in range(workers):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: parse its share, stream it, and leave at once
                os.close(read)
                status = 1
                try:
                    with open(write, "wb") as out:
                        for start in range(share * batch, len(files), workers * batch):
                            chunk = [parse(u, p) for u, p in files[start : start + batch]]
                            pickle.dump([item for item in chunk if item is not None], out)
                    status = 0
                finally:
                    os._exit(status)  # no atexit handlers, no flushing the parent's buffers
            os.close(write)
            children.append((pid, os.fdopen(read, "rb")))
        for number in range(-(-len(files) // batch)):  # the batches in order, round robin
            try:
                chunk = pickle.load(children[number % workers][1])
            except EOFError:
                raise OSError("an index worker failed") from None
            yield from chunk
        while children:
            pid, pipe = children.pop()
            pipe.close()
            if os.waitpid(pid, 0)[1] != 0:
                raise OSError("an index worker failed")
    finally:
        for pid, pipe in children:  # only after an error, or the consumer stopping early
            pipe.close()
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
