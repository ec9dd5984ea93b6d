"""Guest sessions: a token for an anonymous visitor, for a site with no back end of its own.

With ``ARCHIVER_GUEST_SESSIONS=true``, ``POST /session`` mints a short-lived token
(``ARCHIVER_GUEST_TTL``) for a new random user ``guest-<16 hex digits>``, and the same call
with a guest token that has not yet expired in ``Authorization`` mints a fresh one for the
same guest (a refresh: the dialog goes on). embed.js uses it when the page gives no
``data-token``. Off by default: anyone can mint a guest, so what a guest can do is bounded
by the per-address limits (a rate on ``POST /session`` itself, and admission's caps).

A guest token carries ``"guest": true``; only such a token is refreshed, so a host site's
own short tokens cannot be stretched through this route, and no guest is ever admin.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt

from .config import ConfigError, Settings

PREFIX = "guest-"
GUEST_CLAIM = "guest"


def new_user() -> str:
    return PREFIX + secrets.token_hex(8)


def check(settings: Settings) -> None:
    """Guest sessions sign their own tokens: they need the HS256 secret."""
    if settings.guest_sessions and (not settings.jwt_secret or settings.jwt_public_key):
        raise ConfigError(
            "ARCHIVER_GUEST_SESSIONS=true needs HS256 tokens (ARCHIVER_JWT_SECRET, or the "
            "generated one): with ARCHIVER_JWT_PUBLIC_KEY the server cannot sign a guest's"
        )


def mint(settings: Settings, user: str) -> dict[str, Any]:
    """A guest token for ``user`` and what the client needs to know of it."""
    assert settings.jwt_secret, "check(settings) ran at start"
    now = int(time.time())
    ttl = int(settings.guest_ttl)
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + ttl, GUEST_CLAIM: True}
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    token = jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
    return {"token": token, "user": user, "expires_in": ttl}
