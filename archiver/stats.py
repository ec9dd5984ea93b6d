"""Numbers about archives, for ``GET /admin/stats`` and ``archiver stats``: counted once.

The input is one :class:`StatArchive` per archive: who, when it ended, why, and each
message's role, time, interrupted flag, upstream and first-token time. The search
index holds exactly that (:meth:`archiver.index.Index.stat_rows`, no file read);
:func:`from_dialogs` makes the same from parsed files, for a data directory whose index
cannot be written.

* **Reply time** is measured from a user message to the next message when that one is
  the assistant's (the times the journal wrote: when the question was journaled, and
  when the whole answer was). A user message followed by an ``error`` message counts as
  a failed reply; one followed by nothing, or by another user message, is not counted.
* **Days** are the UTC day of the archive's ``ended`` time.
* **First token** is the ``first_token_ms`` an assistant entry records (ms from the
  question being journaled to the first streamed chunk), for the same replies as the
  reply time; entries without it (older archives, a reply stopped before its first
  chunk) are not counted.
* **By upstream**: replies (assistant or error after a user message), interrupted and
  error ones, per the ``upstream`` their entry records; entries written before it was
  recorded count under ``unknown``.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from .dialogfile import Dialog

# Upper bounds (ms) of the reply-time histogram, and (messages) of the length histogram.
REPLY_BUCKETS = (100, 250, 500, 1000, 2000, 5000, 10000, 30000, 60000)
LENGTH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOP_USERS = 50


UNKNOWN = "unknown"  # the upstream of an entry that does not name one


class StatMessage(NamedTuple):
    role: str
    at: int | None  # ms since the epoch
    interrupted: bool = False
    upstream: str | None = None
    first_token_ms: int | None = None


@dataclass
class StatArchive:
    user: str
    ended: str
    reason: str | None
    messages: list[StatMessage] = field(default_factory=list)


@dataclass
class _Replies:
    """What the user-message/answer pairs add up to."""

    ms: list[int] = field(default_factory=list)
    first_ms: list[int] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)  # per day
    interrupted: Counter[str] = field(default_factory=Counter)  # per day
    by_upstream: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


def stamp_ms(stamp: str) -> int | None:
    """``2026-11-21T10:30:05.420Z`` as ms since the epoch; None if it is not one."""
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def from_dialogs(pairs: Iterable[tuple[str, str, Dialog]]) -> Iterator[StatArchive]:
    """(user, ended, dialog) triples as stat rows."""
    for user, ended, dialog in pairs:
        messages = [
            StatMessage(m.role, stamp_ms(m.at), m.interrupted, m.upstream, m.first_token_ms)
            for m in dialog.messages
        ]
        yield StatArchive(user, ended, dialog.reason, messages)


def percentile(ordered: list[int], fraction: float) -> int | None:
    """The nearest-rank percentile of a sorted list."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


def histogram(values: list[int], bounds: tuple[int, ...]) -> list[dict[str, Any]]:
    """Counts per bucket: ``{"le": bound, "count"}``, the last ``{"le": None}`` (more)."""
    counts = [0] * (len(bounds) + 1)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    return [{"le": b, "count": c} for b, c in zip((*bounds, None), counts, strict=True)]


def compute(archives: Iterable[StatArchive]) -> dict[str, Any]:
    """Every figure, as a JSON-ready object (its shape is in docs/search.md)."""
    by_reason: Counter[str] = Counter()
    by_day: dict[str, Counter[str]] = defaultdict(Counter)
    users: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    lengths: list[int] = []
    replies = _Replies()
    for archive in archives:
        reason = archive.reason or "unknown"
        day = archive.ended[:10]
        by_reason[reason] += 1
        by_day[day][reason] += 1
        users[archive.user][0] += 1
        users[archive.user][1] += len(archive.messages)
        lengths.append(len(archive.messages))
        _count_replies(archive, day, replies)
    lengths.sort()
    top = sorted(users.items(), key=lambda kv: (-kv[1][0], kv[0]))[:TOP_USERS]
    failed, interrupted = replies.failed, replies.interrupted
    return {
        "archives": len(lengths),
        "messages": sum(lengths),
        "by_reason": dict(sorted(by_reason.items())),
        "by_day": [
            {"day": d, "reasons": dict(sorted(c.items()))} for d, c in sorted(by_day.items())
        ],
        "users": len(users),
        "top_users": [{"user": u, "archives": n, "messages": m} for u, (n, m) in top],
        "dialog_length": {
            "p50": percentile(lengths, 0.5),
            "p95": percentile(lengths, 0.95),
            "histogram": histogram(lengths, LENGTH_BUCKETS),
        },
        "reply_ms": _distribution(replies.ms),
        "first_token_ms": _distribution(replies.first_ms),
        "interrupted": sum(interrupted.values()),
        "errors": sum(failed.values()),
        "problems_by_day": [
            {"day": d, "interrupted": interrupted[d], "errors": failed[d]}
            for d in sorted(set(interrupted) | set(failed))
        ],
        "problems_by_upstream": [
            {"upstream": name, **{k: c[k] for k in ("replies", "interrupted", "errors")}}
            for name, c in sorted(replies.by_upstream.items())
        ],
    }


def _distribution(values: list[int]) -> dict[str, Any]:
    values.sort()
    return {
        "count": len(values),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "histogram": histogram(values, REPLY_BUCKETS),
    }


def _count_replies(archive: StatArchive, day: str, out: _Replies) -> None:
    for asked, answer in itertools.pairwise(archive.messages):
        if asked.role != "user" or answer.role not in ("assistant", "error"):
            continue
        counts = out.by_upstream[answer.upstream or UNKNOWN]
        counts["replies"] += 1
        if answer.role == "error":
            out.failed[day] += 1
            counts["errors"] += 1
            continue
        if answer.interrupted:
            out.interrupted[day] += 1
            counts["interrupted"] += 1
        if asked.at is not None and answer.at is not None and answer.at >= asked.at:
            out.ms.append(answer.at - asked.at)
            if answer.first_token_ms is not None:
                out.first_ms.append(answer.first_token_ms)
