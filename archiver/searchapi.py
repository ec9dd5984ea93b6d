"""``GET /search``: reading its parameters and shaping its answer (the route is in app).

Who may search what is decided here: a user searches their own archives (a ``user:``
naming anyone else is refused); an admin searches everyone's, or one user's with
``user:``. The cursor (:class:`archiver.index_search.Cursor`) is opaque to clients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .index import MAX_LIMIT
from .index_search import Cursor, Page
from .query import QueryError, Search, parse, snippet

DEFAULT_LIMIT = 50


class BadSearch(ValueError):
    """A search request we refuse: ``status``, ``code``, and the sentence."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


def read_request(
    params: Mapping[str, str], user: str, admin: bool
) -> tuple[Search, int, Cursor | None]:
    """(the query, the page size, the cursor) of a request, or :class:`BadSearch`."""
    try:
        wanted = parse(params.get("q", ""))
    except QueryError as exc:
        raise BadSearch(400, "bad_query", str(exc)) from None
    if not admin:
        if wanted.user not in (None, user):
            raise BadSearch(403, "forbidden", "You can only search your own archives.")
        wanted = dataclasses.replace(wanted, user=user)
    limit = _number(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    raw = params.get("cursor") or ""
    cursor = Cursor.read(raw) if raw else None
    if raw and cursor is None:
        raise BadSearch(400, "bad_cursor", "cursor must be the next of an earlier page.")
    return wanted, limit, cursor


def _number(params: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    span = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise BadSearch(400, f"bad_{name}", f"{name} must be a whole number {span}.")
    value = int(raw)
    if value < low or (high is not None and value > high):
        raise BadSearch(400, f"bad_{name}", f"{name} must be a whole number {span}.")
    return value


def page_json(page: Page) -> dict[str, Any]:
    """``{"hits": [...], "next": cursor or null}``; each hit's ``snippet`` alternates
    plain and matched text (the matched pieces are at the odd indices)."""
    hits = [
        {
            "user": hit.user,
            "archive": hit.archive,
            "dialog": hit.dialog,
            "seq": hit.message.seq,
            "role": hit.message.role,
            "at": hit.message.at,
            "snippet": snippet(hit.message.text, hit.spans),
        }
        for hit in page.hits
    ]
    return {"hits": hits, "next": None if page.next is None else page.next.text()}
