"""The order of search results, defined once: relevance, then recency, in windows.

Both the index (:meth:`archiver.index.Index.search`) and the reference scan
(:func:`ranked_scan`, ``archiver search --scan``) give hits in this order; the property
test in ``tests/test_index.py`` checks they agree hit for hit.

* **Recency.** An archive is newer than another when its key ``(ended, name, udir)`` is
  greater: ``ended`` as the index stores it (the trailer's time, else the time its name
  records), then the file name, then the user's directory name, compared as strings.
  A message is newer than another when its archive is, or, in the same archive, when its
  seq is greater. The index's rowids are in that order (:mod:`archiver.index` keeps them
  so however late an archive is indexed), so "the newest matches" are the highest rowids.
* **Windows.** A query's matches (every word and filter holding) are taken newest first
  in windows of :data:`WINDOW`: the newest ``WINDOW`` matches, then the next older
  ``WINDOW``, and so on; the last window holds what is left. A query with at most
  ``WINDOW`` matches has a single window.
* **Within a window**, best first: FTS5's ``bm25`` score (:func:`bm25`, computed with the
  statistics of the whole index: every indexed message counts, whatever the filters; a
  message's length is its tokens and one more, its owner token, which the index keeps in
  a column of weight 0 so a user's search walks only that user's rows),
  then the newer archive, then the message order (seq ascending).
* Pages run through the first window, then on into the next older one: every match is
  reachable, none is given twice.

Why windows: an exact order by relevance costs bm25 for every match (~200,000 rows for a
common word over 100,000 archives, 240 ms); a window of the newest matches costs bm25 for
``WINDOW`` rows, and FTS5 walks rowids in descending order without scoring them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from .archives import Filter, OnError, export_dialogs, name_time
from .journal import Journal
from .layout import user_dir_name
from .query import Hit, Search, Term, tokens

WINDOW = 2000  # matches per window (chosen by measuring, see docs/performance.md)
_K1 = 1.2  # FTS5's bm25 constants (fts5_aux.c)
_B = 0.75
OWNER_TOKENS = 1  # each indexed message's owner column (index_search.owner_token)

Key = tuple[str, str, str]  # (ended, name, udir)


def archive_key(ended: str, name: str, udir: str) -> Key:
    return (ended, name, udir)


@dataclass(frozen=True)
class Stats:
    """The whole index's counts bm25 uses: messages, tokens, and per term the messages
    it matches."""

    rows: int
    tokens: int
    hits: tuple[int, ...]

    def idf(self) -> list[float]:
        out = []
        for n in self.hits:
            idf = math.log((self.rows - n + 0.5) / (n + 0.5))
            out.append(1e-6 if idf <= 0.0 else idf)
        return out


def count(toks: list[str], term: Term) -> int:
    """How many times ``term`` matches in ``toks`` (at every position, overlapping
    ones too: FTS5's instances of a phrase)."""
    n = len(term.tokens)
    head, last = list(term.tokens[:-1]), term.tokens[-1]
    found = 0
    for i in range(len(toks) - n + 1):
        if toks[i : i + n - 1] != head:
            continue
        candidate = toks[i + n - 1]
        if candidate == last or (term.prefix and candidate.startswith(last)):
            found += 1
    return found


def bm25(idf: list[float], avgdl: float, freqs: list[int], size: int) -> float:
    """FTS5's ``bm25()`` of a row (lower is better), the same operations in the same
    order as fts5_aux.c, so the same double."""
    score = 0.0
    for weight, freq in zip(idf, freqs, strict=True):
        f = float(freq)
        score += weight * ((f * (_K1 + 1.0)) / (f + _K1 * (1 - _B + _B * float(size) / avgdl)))
    return -1.0 * score


def ordered(matches: list[tuple[Key, int, float, Hit]], window: int = WINDOW) -> list[Hit]:
    """``(archive key, seq, bm25, hit)`` of every match, in the order above."""
    newest = sorted(matches, key=lambda m: (m[0], m[1]), reverse=True)
    out: list[Hit] = []
    for start in range(0, len(newest), window):
        chunk = newest[start : start + window]
        # Best score first; then newer archive (key descending), then seq ascending.
        chunk.sort(key=lambda m: m[1])
        chunk.sort(key=lambda m: m[0], reverse=True)
        chunk.sort(key=lambda m: m[2])
        out.extend(m[3] for m in chunk)
    return out


def ranked_scan(
    journal: Journal, search: Search, on_error: OnError | None = None, window: int = WINDOW
) -> Iterator[Hit]:
    """Every match of ``search`` read from the files, in the index's order. Reads every
    archive of every user (bm25 needs the whole corpus's counts), on purpose slowly: it
    defines what the index must answer."""
    rows = total = 0
    hits = [0] * len(search.terms)
    matches: list[tuple[Key, int, list[int], int, Hit]] = []
    for info, dialog in export_dialogs(journal, Filter(), on_error):
        ended = dialog.ended or name_time(info.name)
        wanted = search.wants_archive(info.user, ended, dialog.reason)
        key = archive_key(ended, info.name, user_dir_name(info.user))
        for message in dialog.messages:
            toks = tokens(message.text)
            rows += 1
            total += len(toks) + OWNER_TOKENS
            freqs = [count(toks, term) for term in search.terms]
            for i, freq in enumerate(freqs):
                hits[i] += freq > 0
            if not (wanted and all(freqs)):
                continue
            if search.role is not None and message.role != search.role:
                continue
            hit = Hit(info.user, info.name, dialog.dialog, message, search.spans(message.text))
            matches.append((key, message.seq, freqs, len(toks) + OWNER_TOKENS, hit))
    if not matches:
        return
    stats = Stats(rows, total, tuple(hits))
    idf, avgdl = stats.idf(), stats.tokens / stats.rows
    scored = [(k, seq, bm25(idf, avgdl, f, size), hit) for k, seq, f, size, hit in matches]
    yield from ordered(scored, window)
