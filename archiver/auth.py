"""JWT authentication: one Starlette backend, plus token minting for the CLI and demo URL.

The token comes from ``Authorization: Bearer``, the ``archiver_token`` cookie, or the
``access_token`` query parameter (EventSource cannot send headers), in that order. The
algorithm is pinned by configuration and never read from the token, ``sub`` and ``exp``
are required. A bad token does not fail the request here: the backend hands on an
:class:`Anonymous` user that remembers why, and the route guard answers 401 with that
reason, so public pages still load with a stale cookie.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.requests import HTTPConnection

from .config import Settings
from .layout import BadUserId, secret_path, ticket_secret_path, user_dir_name

COOKIE = "archiver_token"
QUERY = "access_token"
MAX_TOKEN_BYTES = 8192
LEEWAY_SECONDS = 5
VERIFIED_TOKENS = 4096  # verified tokens remembered (a widget sends one token per chat)


@dataclass(frozen=True)
class User(BaseUser):
    id: str
    admin: bool = False
    guest: bool = False  # a token POST /session minted (guests.py): it may be refreshed there

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.id

    @property
    def identity(self) -> str:
        return self.id


@dataclass(frozen=True)
class Anonymous(BaseUser):
    """No usable token; ``reason`` is a stable code, ``detail`` a sentence for people."""

    reason: str = "missing_token"
    detail: str = "This request needs a token: send 'Authorization: Bearer <jwt>'."

    @property
    def is_authenticated(self) -> bool:
        return False

    @property
    def display_name(self) -> str:
        return ""

    @property
    def identity(self) -> str:
        return ""


def load_or_create_secret(data_dir: Path) -> str:
    """The HS256 secret kept in ``<data>/.jwt-secret`` (0600), created on first use."""
    return _load_or_create(secret_path(data_dir))


def load_or_create_ticket_key(data_dir: Path) -> bytes:
    """The stream tickets' HMAC key, ``<data>/.ticket-secret`` (0600), made like the secret."""
    return _load_or_create(ticket_secret_path(data_dir)).encode()


def _load_or_create(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race; use its secret
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


def resolve_settings(settings: Settings) -> Settings:
    """Fill in the generated secret when neither a secret nor a public key is configured."""
    if settings.jwt_secret or settings.jwt_public_key:
        return settings
    return settings.replace(jwt_secret=load_or_create_secret(settings.data_dir))


def _verification_key(settings: Settings) -> str:
    if settings.jwt_public_key:
        key = settings.jwt_public_key
        if not key.lstrip().startswith("-----BEGIN"):
            key = Path(key).read_text()
        return key
    if not settings.jwt_secret:
        raise RuntimeError("no JWT secret configured; call resolve_settings() first")
    return settings.jwt_secret


def mint(settings: Settings, user: str, *, admin: bool = False, ttl: float = 3600) -> str:
    """An HS256 token for ``user``, as a host site would mint it with pyjwt."""
    if not settings.jwt_secret:
        raise RuntimeError("minting needs ARCHIVER_JWT_SECRET (or the generated secret)")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + int(ttl)}
    if admin:
        claims["role"] = "admin"
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def verify(settings: Settings, token: str) -> User:
    """Decode and check ``token``; raise :class:`Rejected` with a reason code."""
    return _verify(settings, token)[0]


def _verify(settings: Settings, token: str) -> tuple[User, float]:
    """:func:`verify`, and the token's ``exp``."""
    if len(token) > MAX_TOKEN_BYTES:
        raise Rejected("token_too_large", "The token is larger than any token we issue.")
    try:
        claims = jwt.decode(
            token,
            _verification_key(settings),
            algorithms=[settings.jwt_algorithm],
            options={"require": ["exp", "sub"]},
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise Rejected("expired_token", "The token has expired; get a new one.") from None
    except jwt.ImmatureSignatureError:
        raise Rejected("token_not_yet_valid", "The token is not valid yet (nbf/iat).") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Rejected("missing_claim", f"The token has no '{exc.claim}' claim.") from None
    except (jwt.InvalidIssuerError, jwt.InvalidAudienceError):
        raise Rejected("wrong_issuer", "The token was issued for someone else.") from None
    except jwt.InvalidSignatureError:
        raise Rejected("bad_signature", "The token's signature does not verify.") from None
    except jwt.InvalidAlgorithmError:
        raise Rejected(
            "bad_algorithm", "The token is signed with an algorithm we do not accept."
        ) from None
    except jwt.PyJWTError:
        raise Rejected("malformed_token", "The token is not a valid JWT.") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Rejected("missing_claim", "The token's 'sub' claim must be a non-empty string.")
    try:
        user_dir_name(sub)
    except BadUserId as exc:
        raise Rejected("bad_user_id", f"The token's user id cannot be used: {exc}.") from None
    guest = claims.get("guest") is True
    return User(id=sub, admin=claims.get("role") == "admin" and not guest, guest=guest), float(
        claims["exp"]
    )


def token_from(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    return conn.cookies.get(COOKIE) or conn.query_params.get(QUERY)


class JWTBackend(AuthenticationBackend):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # token -> (user, exp). A JWT cannot be revoked: once its signature and claims
        # checked out, it stays good until it expires, so the next request with the same
        # token skips pyjwt (~40 us, 5% of a chat). Bounded; the oldest goes first.
        self._verified: dict[str, tuple[User, float]] = {}

    def _user(self, token: str) -> User:
        known = self._verified.get(token)
        if known is not None and known[1] > time.time() - LEEWAY_SECONDS:
            return known[0]
        user, exp = _verify(self.settings, token)
        if len(self._verified) >= VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (user, exp)
        return user

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        token = token_from(conn)
        if token is None:
            return AuthCredentials(), Anonymous()
        if token == "":
            return AuthCredentials(), Anonymous(
                "malformed_token", "The Authorization header must be 'Bearer <jwt>'."
            )
        try:
            user = self._user(token)
        except Rejected as exc:
            return AuthCredentials(), Anonymous(exc.reason, exc.detail)
        scopes = ["authenticated", "admin"] if user.admin else ["authenticated"]
        return AuthCredentials(scopes), user
