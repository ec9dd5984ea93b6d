"""Who tried to frame the widget without being allowed to.

The pages' CSP (``frame-ancestors 'self' <ARCHIVER_ALLOWED_ORIGINS>``) makes a browser
refuse to show the widget inside a site that is not listed, and the browser says so only
in that visitor's console. The server sees the attempt, though: the frame's request
carries ``Sec-Fetch-Dest: iframe``, a ``Sec-Fetch-Site`` other than ``same-origin``, and
(embed.js sets ``referrerpolicy="origin"`` on its iframe) the embedding page's origin in
``Referer``. :class:`FramingWatch` logs one ``widget.framing_refused`` line per such origin,
so the operator who forgot the setting finds it in the log, not in a visitor's console.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import Scope

from .logs import log

# Origins remembered so each is logged once; past this many, new ones are no longer
# logged (a hostile client could otherwise grow the set, or the log, without bound).
MAX_ORIGINS = 1000
_MAX_ORIGIN_CHARS = 200


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def framing_origin(scope: Scope) -> str | None:
    """The origin of the page that frames this request, or None if it is no foreign frame.

    ``"unknown"`` when the framing page sent no ``Referer`` (an embed.js of before it set
    its referrer policy, or a page that strips referrers)."""
    if _header(scope, b"sec-fetch-dest") != "iframe":
        return None
    if _header(scope, b"sec-fetch-site") in (None, "same-origin"):
        return None
    parts = urlsplit(_header(scope, b"referer") or "")
    if not parts.scheme or not parts.netloc:
        return "unknown"
    return f"{parts.scheme}://{parts.netloc}"[:_MAX_ORIGIN_CHARS]


class FramingWatch:
    """Logs each origin that frames a page but is not in ``allowed``, once."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = frozenset(origin.rstrip("/") for origin in allowed)
        self.seen: set[str] = set()

    def check(self, scope: Scope) -> None:
        origin = framing_origin(scope)
        if origin is None or origin in self.allowed or origin in self.seen:
            return
        if len(self.seen) >= MAX_ORIGINS:
            return
        self.seen.add(origin)
        log.warning(
            "widget.framing_refused",
            origin=origin,
            path=scope.get("path", ""),
            hint="add the origin to ARCHIVER_ALLOWED_ORIGINS",
        )
