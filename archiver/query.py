"""The search language, and what "a message matches" means, defined once.

Both the full-text index (:mod:`archiver.index`) and the reference file scan
(:func:`scan`) use the definitions here, so they cannot disagree:

* **Tokens.** A message's text is cut into runs of letters and digits (``str.isalnum``,
  so every script's letters and digits, but not ``_``) and the combining accents of the
  Latin, Greek and Cyrillic blocks. Each run is NFKC-normalized and case-folded
  (``Straße`` -> ``strasse``, ``ﬁle`` -> ``file``, fullwidth letters -> ASCII, a decomposed
  ``é`` -> the composed one), and cut again where that produced a non-letter. Everything
  else (spaces, punctuation, symbols, emoji, ``_``) separates tokens.
* **A word** matches a message holding that token; a word that normalizes to several
  tokens (``don't``, ``e-bike``, ``#1042``) matches them in a row, as a phrase does.
* **A phrase**, ``"refund issued"``, matches its tokens in a row, whatever whitespace or
  punctuation separates them in the message (or the query).
* **A prefix**, ``refund*`` or ``"order refu"*``, matches when the last token begins so.
* **Filters** ``user:U``, ``role:R``, ``reason:R``, ``since:D``, ``until:D`` select
  archives and messages as the CLI's ``--user``/``--role``/``--reason``/``--since``/
  ``--until`` do (``since``/``until`` judge the archive's ``ended`` time; a date is a
  whole UTC day). A value with spaces is quoted: ``user:"Jane Doe"``.
* Every word, phrase and filter must hold (AND). There is no OR or NOT: ``OR`` is a word.

A query that cannot be read raises :class:`QueryError`, whose text is a sentence for a
person (the HTTP API answers it as a 400).

The index stores, for each message, these tokens joined by spaces and lets SQLite's
``ascii`` tokenizer split them again; since a token holds only ASCII letters and digits
and non-ASCII characters, that split gives back exactly these tokens (see
:mod:`archiver.index`). The property test in ``tests/test_index.py`` checks both agree.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .archives import (
    FILE_ERRORS,
    Filter,
    OnError,
    UnknownUser,
    export_dialogs,
    parse_time,
    read_dialog,
    users_of,
)
from .dialogfile import REASONS, ROLES, Message
from .journal import Journal
from .layout import CURRENT

# Letters and digits of any script, and the combining accents of the Latin, Greek and
# Cyrillic blocks (so a decomposed "é" stays one token and NFKC can compose it).
_TOKEN = re.compile(r"(?:[^\W_]|[\u0300-\u036f\u0483-\u0489\u1ab0-\u1aff\u1dc0-\u1dff])+")
FILTERS = ("user", "role", "reason", "since", "until")
SNIPPET_CONTEXT = 60  # characters of context on each side of the first hit


class QueryError(ValueError):
    """A query that cannot be read; the message is a sentence for a person."""


def token_spans(text: str) -> Iterator[tuple[str, int, int]]:
    """Each token of ``text`` with the span of the run of ``text`` it came from."""
    for match in _TOKEN.finditer(text):
        run = match.group()
        if run.isascii():
            yield run.lower(), match.start(), match.end()
            continue
        folded = unicodedata.normalize("NFKC", run).casefold()
        for token in _TOKEN.findall(folded):
            yield token, match.start(), match.end()


def tokens(text: str) -> list[str]:
    """The tokens of ``text`` (what :func:`token_spans` yields, faster: this runs over
    every message an index build reads)."""
    if text.isascii():  # NFKC and case folding are lower() on ASCII
        return _TOKEN.findall(text.lower())
    out: list[str] = []
    for run in _TOKEN.findall(text):
        if run.isascii():
            out.append(run.lower())
        else:
            out.extend(_TOKEN.findall(unicodedata.normalize("NFKC", run).casefold()))
    return out


def index_text(text: str) -> str:
    """What the index stores for a message: its tokens, space-separated."""
    return " ".join(tokens(text))


@dataclass(frozen=True)
class Hit:
    """One message that matched, and where in its text (the index, the scan and the
    CLI's regex search all answer with these)."""

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


# ---------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class Term:
    """A word or phrase: tokens in a row, the last one maybe only a prefix."""

    tokens: tuple[str, ...]
    prefix: bool = False

    def fts(self) -> str:
        """The term in FTS5's query syntax: one quoted string (never an operator)."""
        return '"' + " ".join(self.tokens) + '"' + (" *" if self.prefix else "")


@dataclass(frozen=True)
class Search:
    """A parsed query: terms that must all match, and filters."""

    terms: tuple[Term, ...]
    user: str | None = None
    role: str | None = None
    reason: str | None = None
    since: str | None = None  # UTC timestamp bounds on the archive's ended time
    before: str | None = None  # exclusive
    text: str = field(default="", compare=False)

    def fts(self) -> str:
        return " AND ".join(term.fts() for term in self.terms)

    def wants_archive(self, user: str, ended: str, reason: str | None) -> bool:
        if self.user is not None and user != self.user:
            return False
        if self.reason is not None and reason != self.reason:
            return False
        if self.since is not None and ended < self.since:
            return False
        return self.before is None or ended < self.before

    def matches(self, text: str) -> bool:
        toks = tokens(text)
        return all(_find(toks, term) >= 0 for term in self.terms)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where in ``text`` the terms matched (whole runs), merged, in order."""
        found = list(token_spans(text))
        toks = [t for t, _, _ in found]
        spans: list[tuple[int, int]] = []
        for term in self.terms:
            start = 0
            while (at := _find(toks, term, start)) >= 0:
                spans.append((found[at][1], found[at + len(term.tokens) - 1][2]))
                start = at + 1
        return _merged(spans)


def _find(toks: list[str], term: Term, start: int = 0) -> int:
    """The first index from ``start`` where ``term`` matches in ``toks``, or -1."""
    n = len(term.tokens)
    head, last = list(term.tokens[:-1]), term.tokens[-1]
    for i in range(start, len(toks) - n + 1):
        if toks[i : i + n - 1] != head:
            continue
        candidate = toks[i + n - 1]
        if candidate == last or (term.prefix and candidate.startswith(last)):
            return i
    return -1


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def parse(text: str) -> Search:
    """Read a query (see the module docstring); :class:`QueryError` if it cannot be read."""
    terms: list[Term] = []
    filters: dict[str, str] = {}
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        name = _filter_name(text, pos)
        if name is not None:
            value, pos = _value(text, pos + len(name) + 1, name)
            if name in filters:
                raise QueryError(f"The filter {name}: is given twice.")
            filters[name] = value
        elif text[pos] == '"':
            term, pos = _phrase(text, pos)
            terms.append(term)
        else:
            term, pos = _word(text, pos)
            terms.append(term)
    if not terms:
        raise QueryError("Give at least one word to search for.")
    return _search(tuple(terms), filters, text)


def _filter_name(text: str, pos: int) -> str | None:
    for name in FILTERS:
        if text[pos : pos + len(name) + 1].lower() == name + ":":
            return name
    return None


def _value(text: str, pos: int, name: str) -> tuple[str, int]:
    if pos < len(text) and text[pos] == '"':
        end = text.find('"', pos + 1)
        if end < 0:
            raise QueryError(f"The quote after {name}: is not closed.")
        value, pos = text[pos + 1 : end], end + 1
    else:
        end = pos
        while end < len(text) and not text[end].isspace():
            end += 1
        value, pos = text[pos:end], end
    if not value:
        raise QueryError(f"The filter {name}: needs a value, as in {name}:{_EXAMPLES[name]}.")
    return value, pos


_EXAMPLES = {
    "user": "alice",
    "role": "user",
    "reason": "timeout",
    "since": "2026-11-01",
    "until": "2026-11-30",
}


def _phrase(text: str, pos: int) -> tuple[Term, int]:
    end = text.find('"', pos + 1)
    if end < 0:
        raise QueryError('A quote is not closed: put a phrase between two quotes, "like this".')
    body = text[pos + 1 : end]
    pos = end + 1
    prefix = pos < len(text) and text[pos] == "*"
    if prefix:
        pos += 1
    if pos < len(text) and not text[pos].isspace():
        raise QueryError(f'Leave a space after the phrase "{body}".')
    return _term(body, prefix, f'"{body}"'), pos


def _word(text: str, pos: int) -> tuple[Term, int]:
    end = pos
    while end < len(text) and not text[end].isspace():
        end += 1
    word = text[pos:end]
    if '"' in word:
        raise QueryError(f'{word!r}: quotes go around a whole phrase, "like this".')
    prefix = word.endswith("*")
    body = word[:-1] if prefix else word
    if "*" in body:
        raise QueryError(f"{word!r}: a * may only end a word, as in refund*.")
    return _term(body, prefix, word), end


def _term(body: str, prefix: bool, shown: str) -> Term:
    found = tuple(tokens(body))
    if not found:
        raise QueryError(f"{shown} has no letters or digits to search for.")
    return Term(found, prefix)


def _search(terms: tuple[Term, ...], filters: dict[str, str], text: str) -> Search:
    role = filters.get("role")
    if role is not None and role not in ROLES:
        raise QueryError(f"role: is one of {', '.join(ROLES)}, not {role!r}.")
    reason = filters.get("reason")
    if reason is not None and reason not in REASONS:
        raise QueryError(f"reason: is one of {', '.join(REASONS)}, not {reason!r}.")
    try:
        since = parse_time(filters["since"]) if "since" in filters else None
        before = parse_time(filters["until"], end=True) if "until" in filters else None
    except ValueError as exc:
        raise QueryError(f"{str(exc)[0].upper()}{str(exc)[1:]}.") from None
    return Search(terms, filters.get("user"), role, reason, since, before, text)


# ---------------------------------------------------------------------------------------
# Snippets


def snippet(text: str, spans: list[tuple[int, int]], context: int = SNIPPET_CONTEXT) -> list[str]:
    """A piece of ``text`` around its first hit, as alternating segments: plain, marked,
    plain, ... (always an odd count: the marked words are at the odd indices). Lines are
    joined with spaces; ``…`` shows where the text was cut."""
    flat = " ".join(text.split("\n"))
    if not spans:
        return [flat[: 2 * context] + ("…" if len(flat) > 2 * context else "")]
    lo = max(0, spans[0][0] - context)
    hi = min(len(flat), max(spans[0][1] + context, lo + 2 * context))
    out = ["…" if lo > 0 else ""]
    pos = lo
    for start, end in spans:
        start, end = max(start, pos), min(end, hi)
        if start >= end:
            continue
        out[-1] += flat[pos:start]
        out.append(flat[start:end])
        out.append("")
        pos = end
    out[-1] += flat[pos:hi] + ("…" if hi < len(flat) else "")
    return out


# ---------------------------------------------------------------------------------------
# The reference: a scan of the files


def scan(journal: Journal, search: Search, on_error: OnError | None = None) -> Iterator[Hit]:
    """Every message of every archive that ``search`` matches, read from the files:
    newest archives first, within one in order. Slow on purpose (it parses every
    archive the filters keep); it defines what the index must find."""
    where = Filter(search.user, search.since, search.before, search.reason)
    try:
        for info, dialog in export_dialogs(journal, where, on_error):
            for message in dialog.messages:
                if _wanted(search, message):
                    spans = search.spans(message.text)
                    yield Hit(info.user, info.name, dialog.dialog, message, spans)
    except UnknownUser:  # raised before the first archive: a user: filter of no one
        return


def scan_current(journal: Journal, search: Search) -> Iterator[Hit]:
    """Matching messages of the live dialogs (never indexed: they change with every
    message). Filters on archives (reason, since, until) leave them out."""
    if search.reason is not None or search.since is not None or search.before is not None:
        return
    try:
        users = users_of(journal, search.user)
    except UnknownUser:
        return
    for user in users:
        try:
            dialog = read_dialog(journal.layout.current_path(user), live=True)
        except FILE_ERRORS:
            continue
        for message in dialog.messages:
            if _wanted(search, message):
                spans = search.spans(message.text)
                yield Hit(user, CURRENT, dialog.dialog, message, spans)


def _wanted(search: Search, message: Message) -> bool:
    return (search.role is None or message.role == search.role) and search.matches(message.text)
