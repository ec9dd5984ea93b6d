from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request

from archiver import auth
from archiver.auth import Anonymous, JWTBackend, Rejected, User, verify
from archiver.config import Settings
from tests.helpers import sign

SECRET = "s" * 64
SETTINGS = Settings(jwt_secret=SECRET)


def token(claims: dict, key: str = SECRET, alg: str = "HS256") -> str:  # type: ignore[type-arg]
    return sign(claims, key, alg)


def soon() -> int:
    return int(time.time()) + 60


def test_a_token_minted_by_a_host_site_with_pyjwt_works() -> None:
    user = verify(SETTINGS, token({"sub": "auth0|42", "exp": soon()}))
    assert user == User("auth0|42", admin=False)
    assert verify(SETTINGS, token({"sub": "a", "exp": soon(), "role": "admin"})).admin


@pytest.mark.parametrize(
    ("claims", "key", "alg", "reason"),
    [
        ({"sub": "a", "exp": 1}, SECRET, "HS256", "expired_token"),
        ({"sub": "a"}, SECRET, "HS256", "missing_claim"),
        ({"exp": soon}, SECRET, "HS256", "missing_claim"),
        (
            {"sub": "a", "exp": soon},
            "another secret that is long enough!!",
            "HS256",
            "bad_signature",
        ),
        ({"sub": "a", "exp": soon}, SECRET, "HS512", "bad_algorithm"),
        (
            {"sub": "a", "exp": soon, "nbf": lambda: soon() + 600},
            SECRET,
            "HS256",
            "token_not_yet_valid",
        ),
        ({"sub": "x" * 300, "exp": soon}, SECRET, "HS256", "bad_user_id"),
    ],
)
def test_bad_tokens_are_rejected_with_a_reason(
    claims: dict, key: str, alg: str, reason: str
) -> None:  # type: ignore[type-arg]
    # Times are made now, not when the parameters were collected: a long session could
    # reach this test after a collection-time "soon" had passed.
    claims = {name: value() if callable(value) else value for name, value in claims.items()}
    with pytest.raises(Rejected) as info:
        verify(SETTINGS, token(claims, key, alg))
    assert info.value.reason == reason
    assert info.value.detail.endswith(".")


def test_non_string_sub_and_alg_none_and_oversize_are_rejected() -> None:
    unsigned = sign({"sub": "a", "exp": soon()}, None, "none")
    for bad in (token({"sub": 42, "exp": soon()}), unsigned, "x" * 20_000, "a.b.c"):
        with pytest.raises(Rejected):
            verify(SETTINGS, bad)


def test_rs256_pins_the_algorithm_against_key_confusion(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    key_file = tmp_path / "key.pem"
    key_file.write_text(public_pem)
    settings = Settings(jwt_algorithm="RS256", jwt_public_key=str(key_file))
    good = sign({"sub": "a", "exp": soon()}, private, "RS256")
    assert verify(settings, good).id == "a"

    # The public key used as an HMAC secret: the classic confusion attack, built by hand
    # because pyjwt itself refuses to sign with a PEM key as an HMAC secret.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": "a", "exp": soon()}).encode())
    sig = hmac.new(public_pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(Rejected) as info:
        verify(settings, f"{header}.{payload}.{b64(sig)}")
    assert info.value.reason == "bad_algorithm"


def test_issuer_and_audience_are_checked_when_configured() -> None:
    settings = Settings(jwt_secret=SECRET, jwt_issuer="shop", jwt_audience="chat")
    ok = token({"sub": "a", "exp": soon(), "iss": "shop", "aud": "chat"})
    assert verify(settings, ok).id == "a"
    with pytest.raises(Rejected) as info:
        verify(settings, token({"sub": "a", "exp": soon(), "iss": "evil", "aud": "chat"}))
    assert info.value.reason == "wrong_issuer"


def _request(headers: dict[str, str] | None = None, query: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(
        {
            "type": "http",
            "headers": raw,
            "query_string": query.encode(),
            "method": "GET",
            "path": "/",
        }
    )


async def _auth(request: Request) -> object:
    return (await JWTBackend(SETTINGS).authenticate(request))[1]


@pytest.mark.anyio
async def test_token_sources_header_cookie_query() -> None:
    good = token({"sub": "a", "exp": soon()})
    assert await _auth(_request({"Authorization": f"Bearer {good}"})) == User("a")
    assert await _auth(_request({"Cookie": f"archiver_token={good}"})) == User("a")
    assert await _auth(_request(query=f"access_token={good}")) == User("a")
    missing = await _auth(_request())
    assert isinstance(missing, Anonymous) and missing.reason == "missing_token"
    basic = await _auth(_request({"Authorization": "Basic abc"}))
    assert isinstance(basic, Anonymous) and basic.reason == "malformed_token"


def test_generated_secret_is_private_and_kept(tmp_path: Path) -> None:
    first = auth.load_or_create_secret(tmp_path)
    mode = stat.S_IMODE((tmp_path / ".jwt-secret").stat().st_mode)
    assert mode == 0o600
    assert auth.load_or_create_secret(tmp_path) == first
    resolved = auth.resolve_settings(Settings(data_dir=tmp_path))
    assert resolved.jwt_secret == first
    assert verify(resolved, auth.mint(resolved, "demo")).id == "demo"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_verified_token_is_remembered_until_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = JWTBackend(SETTINGS)
    good = token({"sub": "a", "exp": int(time.time()) + 30})
    request = _request({"Authorization": f"Bearer {good}"})
    assert (await backend.authenticate(request))[1] == User("a")
    calls: list[str] = []
    real = auth._verify
    monkeypatch.setattr(auth, "_verify", lambda s, t: calls.append(t) or real(s, t))
    assert (await backend.authenticate(request))[1] == User("a")
    assert calls == []  # the signature was not checked again
    # Once its exp (plus the leeway) has passed, the token goes back through pyjwt.
    user, _ = backend._verified[good]
    backend._verified[good] = (user, time.time() - auth.LEEWAY_SECONDS - 1)
    assert (await backend.authenticate(request))[1] == User("a")
    assert calls == [good]


@pytest.mark.anyio
async def test_the_verified_token_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "VERIFIED_TOKENS", 3)
    backend = JWTBackend(SETTINGS)
    for user in "abcde":
        good = token({"sub": user, "exp": soon()})
        assert (await backend.authenticate(_request({"Authorization": f"Bearer {good}"})))[1]
    assert [u.id for u, _ in backend._verified.values()] == ["c", "d", "e"]
