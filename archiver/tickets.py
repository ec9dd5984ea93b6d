"""Stream tickets: what a browser puts in the EventSource URL instead of its token.

EventSource cannot send headers, so a token in ``?access_token=`` ends up wherever URLs
are written: nginx quotes the request line, query included, in its error log. The widget
instead asks ``POST /subscribe/ticket`` (the token in ``Authorization``) for a ticket and
opens ``GET /subscribe?ticket=...``. A ticket names one user, is good for
``TICKET_SECONDS`` and for one stream: in a log line it is worthless seconds later.

A ticket is ``<user, expiry, nonce>`` with an HMAC-SHA256 of it, keyed by a secret kept in
the data directory (``.ticket-secret``, made like the JWT secret), so any instance that
shares the data directory can redeem a ticket another issued, whatever nginx's routing.
That it is used once is remembered here, per process, until it expires; with a shared
broker (Redis) also there, atomically (``Broker.use_ticket``: ``SET NX`` on
``ticket:<nonce>`` for what is left of its life), so a ticket redeemed on one instance is
refused on every other with the same sentence. While that broker is lost a ticket is
single-use per instance only: streams keep opening (the local record still holds), and a
ticket is worthless 30 s later anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

TICKET_SECONDS = 30.0
_MAX_TICKET_CHARS = 2048
USED = "The stream ticket was used already; ask for a new one."
# (nonce, seconds it has left) -> True if no instance redeemed it before (Broker.use_ticket)
SharedUse = Callable[[str, float], Awaitable[bool]]


class BadTicket(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Tickets:
    key: bytes
    seconds: float = TICKET_SECONDS
    # The broker's record shared by every instance; None: this process's record only.
    shared: SharedUse | None = None
    # nonce -> expiry of tickets redeemed here; pruned as they expire
    _used: dict[str, float] = field(default_factory=dict)

    def issue(self, user: str, now: float) -> str:
        body = json.dumps(
            {"u": user, "e": round(now + self.seconds, 3), "n": secrets.token_urlsafe(12)},
            separators=(",", ":"),
        ).encode()
        return _b64(body) + "." + _b64(self._sign(body))

    async def redeem_everywhere(self, ticket: str, now: float) -> str:
        """:meth:`redeem`, and refused too if any other instance redeemed it before."""
        user, nonce, expires = self._redeem_here(ticket, now)
        if self.shared is not None and not await self.shared(nonce, expires - now):
            raise BadTicket(USED)
        return user

    def redeem(self, ticket: str, now: float) -> str:
        """The ticket's user; raises :class:`BadTicket` (with a sentence) otherwise."""
        return self._redeem_here(ticket, now)[0]

    def _redeem_here(self, ticket: str, now: float) -> tuple[str, str, float]:
        body = self._verified(ticket)
        try:
            claims = json.loads(body)
            user, expires, nonce = str(claims["u"]), float(claims["e"]), str(claims["n"])
        except (ValueError, KeyError, TypeError):
            raise BadTicket("The stream ticket is malformed.") from None
        if now >= expires:
            raise BadTicket("The stream ticket has expired; ask for a new one.")
        self._forget_expired(now)
        if nonce in self._used:
            raise BadTicket(USED)
        self._used[nonce] = expires
        return user, nonce, expires

    def _verified(self, ticket: str) -> bytes:
        body_text, dot, mac_text = ticket.partition(".")
        if not dot or len(ticket) > _MAX_TICKET_CHARS:
            raise BadTicket("The stream ticket is malformed.")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:
            raise BadTicket("The stream ticket is malformed.") from None
        if not hmac.compare_digest(mac, self._sign(body)):
            raise BadTicket("The stream ticket is not one of ours.")
        return body

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self.key, body, hashlib.sha256).digest()

    def _forget_expired(self, now: float) -> None:
        # Tickets expire in order of issue, roughly: stop at the first one still good.
        for nonce, expires in list(self._used.items()):
            if expires > now:
                break
            del self._used[nonce]
