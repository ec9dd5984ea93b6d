"""Attacks against a live server: tokens, paths, other users' data, CORS, bodies.

Every refusal is a JSON 4xx that writes nothing, is logged once, and never echoes the
token; conftest.py checks at the end of the session that no log the suite produced holds
any token it minted or the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import re
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from archiver.layout import user_dir_name
from archiver.openapi_schemas import AUTH_CODES
from tests.helpers import SECRET, Server, SSEClient, mint, remember, sign, wait_for
from tests.invariants import stray_files

# The one list of 401 codes (the OpenAPI document names them; test_openapi checks it
# holds every code archiver/auth.py raises).
AUTH_ERRORS = set(AUTH_CODES)
ISSUER, AUDIENCE = "https://issuer.example", "archiver-tests"


# --------------------------------------------------------------------------------------
# Servers and tools


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None = None) -> str:
    """A token built by hand (pyjwt refuses to make the dangerous ones), HS256-signed
    with ``key`` if given, else unsigned."""
    signing = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    signature = _b64(hmac.new(key, signing.encode(), hashlib.sha256).digest()) if key else ""
    return remember(signing + "." + signature)


def claims(sub: Any = "mallory", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 600}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not ...}


def hs(payload: dict[str, Any], secret: str = SECRET) -> str:
    return sign(payload, secret)


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    def pair() -> tuple[bytes, bytes]:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem, public

    private, public = pair()
    other, _ = pair()
    return {"private": private, "public": public, "other": other}


def _server(base: Path, name: str, **settings: str) -> Iterator[Server]:
    server = Server(data=base / "data", log_path=base / f"{name}.log", settings=settings)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server(
        tmp_path_factory.mktemp("hs"), "hs", max_message_bytes="1000", echo_delay="0"
    )


@pytest.fixture(scope="module")
def claims_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server(
        tmp_path_factory.mktemp("iss"), "iss", jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )


@pytest.fixture(scope="module")
def rs_server(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, bytes]) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("rs")
    key = base / "public.pem"
    key.write_bytes(keys["public"])
    # jwt_secret="" : no HS secret at all on this server, only the public key.
    yield from _server(base, "rs", jwt_algorithm="RS256", jwt_public_key=str(key), jwt_secret="")


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def raw(server: Server, method: str, target: str, headers: dict[str, str] | None = None,
        body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """A request whose target goes out exactly as written (httpx would normalize ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def assert_refused(
    server: Server,
    send: Any,
    status: int,
    errors: set[str] | None = None,
    secret: str | None = None,
) -> dict[str, Any]:
    """``send()`` is refused with ``status``, a JSON error, nothing written, one log line."""
    since = server.log_barrier()  # an earlier request's lines can land after its answer
    before = files(server.data)
    code, headers, body = send()
    assert code == status, body[:300]
    assert headers["content-type"].startswith("application/json"), headers
    payload = json.loads(body)
    assert set(payload) == {"error", "detail"} and payload["detail"].endswith("."), payload
    if errors is not None:
        assert payload["error"] in errors, payload
    assert b"Traceback" not in body
    if secret is not None:
        assert secret.encode() not in body
    assert files(server.data) == before, "a refused request wrote nothing"
    until = server.log_barrier()  # first: the log must be read after the barrier
    new = server.log().splitlines()[since:until]
    rejected = [line for line in new if ".rejected " in line]
    assert len(rejected) == 1, new
    if secret is not None:
        assert secret not in server.log()
    return dict(payload)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------------------
# Tokens

NOW = int(time.time())
HS_CASES: dict[str, Any] = {
    "alg none": lambda k: forge({"alg": "none", "typ": "JWT"}, claims()),
    "alg None": lambda k: forge({"alg": "None"}, claims()),
    "alg nOnE signed": lambda k: forge({"alg": "nOnE"}, claims(), SECRET.encode()),
    "HS512 with the right secret": lambda k: sign(claims(), SECRET, "HS512"),
    "RS256 to an HS server": lambda k: sign(claims(), k["private"], "RS256"),
    "expired": lambda k: hs(claims(exp=NOW - 60)),
    "nbf in the future": lambda k: hs(claims(nbf=NOW + 3600)),
    "iat in the future": lambda k: hs(claims(iat=NOW + 3600)),
    "no sub": lambda k: hs(claims(sub=...)),
    "sub a number": lambda k: hs(claims(sub=42)),
    "sub a list": lambda k: hs(claims(sub=["a"])),
    "sub an object": lambda k: hs(claims(sub={"id": "a"})),
    "sub null": lambda k: hs(claims(sub=None)),
    "sub empty": lambda k: hs(claims(sub="")),
    "sub true": lambda k: hs(claims(sub=True)),
    "sub of 10,000 bytes": lambda k: hs(claims(sub="x" * 10_000)),
    "no exp": lambda k: hs({"sub": "mallory"}),
    "exp a string": lambda k: forge({"alg": "HS256"}, claims(exp="never"), SECRET.encode()),
    "another secret": lambda k: hs(claims(), "another-secret-of-enough-length-0123456789"),
    "kid pointing at the secret file": lambda k: forge(
        {"alg": "HS256", "kid": "../../.jwt-secret"}, claims(), b"guess"
    ),
    "garbage": lambda k: remember("a.b.c"),
    "dots": lambda k: remember("...."),
    "not base64": lambda k: remember("%%%.%%%.%%%"),
    "empty claims": lambda k: forge({"alg": "HS256"}, {}, SECRET.encode()),
    "1 MB token": lambda k: remember("eyJ" + "A" * (1 << 20)),
}


def _chat_with(server: Server, headers: dict[str, str]) -> Any:
    headers = {**headers, "Content-Type": "application/json"}
    return lambda: raw(server, "POST", "/chat", headers, b'{"message": "let me in"}')


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("case", list(HS_CASES))
def test_bad_tokens_are_401_write_nothing_and_never_echo_the_token(
    hs_server: Server, keys: dict[str, bytes], case: str
) -> None:
    token = HS_CASES[case](keys)
    assert_refused(hs_server, _chat_with(hs_server, bearer(token)), 401, AUTH_ERRORS, token)
    # The cookie and the query parameter are read the same way.
    cookie = {"Cookie": f"archiver_token={token}"}
    assert_refused(hs_server, _chat_with(hs_server, cookie), 401, AUTH_ERRORS, token)


def test_a_1_mb_token_in_the_query_string_is_refused_before_the_app(hs_server: Server) -> None:
    """uvicorn's HTTP parser refuses a 1 MB request line before the app; the answer is
    JSON like every other error (httpproto.JsonErrorsProtocol)."""
    token = remember("eyJ" + "A" * (1 << 20))
    before = files(hs_server.data)
    code, headers, body = raw(hs_server, "GET", f"/dialog?access_token={token}")
    assert code == 400 and token.encode() not in body
    assert headers["content-type"] == "application/json", headers
    assert json.loads(body)["error"] == "bad_request" and json.loads(body)["detail"], body
    assert files(hs_server.data) == before
    assert token not in hs_server.log()


def test_other_schemes_and_empty_bearers_are_401(hs_server: Server) -> None:
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "bearer", "Token abc"):
        got = assert_refused(
            hs_server, _chat_with(hs_server, {"Authorization": header}), 401, AUTH_ERRORS
        )
        assert got["error"] in ("malformed_token", "missing_token"), (header, got)


@pytest.mark.parametrize(
    ("case", "payload"),
    [
        ("wrong iss", {"iss": "https://evil.example", "aud": AUDIENCE}),
        ("no iss", {"aud": AUDIENCE}),
        ("wrong aud", {"iss": ISSUER, "aud": "someone-else"}),
        ("no aud", {"iss": ISSUER}),
        ("aud list without ours", {"iss": ISSUER, "aud": ["a", "b"]}),
    ],
)
def test_issuer_and_audience_are_enforced_when_configured(
    claims_server: Server, case: str, payload: dict[str, Any]
) -> None:
    token = hs(claims(**payload))
    got = assert_refused(
        claims_server, _chat_with(claims_server, bearer(token)), 401, AUTH_ERRORS, token
    )
    assert got["error"] in ("wrong_issuer", "missing_claim"), (case, got)


def test_the_right_issuer_and_audience_get_in(claims_server: Server) -> None:
    token = hs(claims(sub="welcome", iss=ISSUER, aud=AUDIENCE))
    response = httpx.post(
        claims_server.url + "/chat", json={"message": "hi"}, headers=bearer(token), timeout=30
    )
    assert response.status_code == 200, response.text


def test_rs256_server_refuses_key_confusion_and_foreign_keys(
    rs_server: Server, keys: dict[str, bytes]
) -> None:
    public = keys["public"]
    bad = {
        # The classic: the public key, which everyone may know, used as an HMAC secret.
        "HS256 signed with the public key": forge({"alg": "HS256", "typ": "JWT"}, claims(), public),
        "RS256 header, HMAC signature": forge({"alg": "RS256"}, claims(), public),
        "RS256 from another key": sign(claims(), keys["other"], "RS256"),
        "alg none": forge({"alg": "none"}, claims()),
        "HS256 with the test secret": hs(claims()),
    }
    for case, token in bad.items():
        got = assert_refused(rs_server, _chat_with(rs_server, bearer(token)), 401, None, token)
        assert got["error"] in ("bad_algorithm", "bad_signature"), (case, got)
    good = sign(claims(sub="rs-user"), keys["private"], "RS256")
    response = httpx.post(
        rs_server.url + "/chat", json={"message": "hi"}, headers=bearer(good), timeout=30
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "role", ["ADMIN", "Admin", "admin ", ["admin"], {"admin": True}, True, "administrator"]
)
def test_only_the_exact_admin_role_opens_admin_routes(hs_server: Server, role: Any) -> None:
    token = hs(claims(sub="pretender", role=role))
    for path in ("/users", "/users/victim/archives", "/admin/feed"):
        got = assert_refused(hs_server, lambda p=path: raw(hs_server, "GET", p, bearer(token)), 403)
        assert got["error"] == "forbidden"


# --------------------------------------------------------------------------------------
# Paths

TRICKY_SUBS = [
    "..",
    ".",
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "%2e%2e",
    "%2e%2e%2fx",
    "..%2f..%2f",
    "nul\x00byte",
    "\x00",
    "\u2024\u2024",  # one dot leader, twice: looks like ..
    "\uff0e\uff0e\uff0fetc",  # fullwidth ../etc
    "..\u2215etc",  # division slash
    "\u2025",  # two dot leader
    "a\u200bb",  # zero-width space
    ".hidden",
    "~root",
    "CON",
    "x" * 79 + "/",  # 80 characters, 82 bytes encoded
    "é" * 40,  # 240 bytes encoded: the longest that fits
    "\n\r\t",
    "$(id)",
    "' OR 1=1 --",
]


def test_any_sub_gets_its_own_directory_strictly_under_users(hs_server: Server) -> None:
    users = hs_server.data / "users"
    for sub in TRICKY_SUBS:
        response = hs_server.chat(sub, "hello")
        assert response.status_code == 200, (sub, response.text)
        directory = users / user_dir_name(sub)
        assert directory.parent == users and directory.is_dir(), sub
        assert directory.resolve().parent == users.resolve(), sub
        dialog = httpx.get(hs_server.url + "/dialog", headers=hs_server.headers(sub)).json()
        assert dialog["user"] == sub and dialog["messages"][0]["text"] == "hello", sub
    top = {p.name for p in users.iterdir()}
    assert all("/" not in n and not n.startswith(".") and n not in ("", "..") for n in top)
    assert stray_files(hs_server.data) == []
    for outside in ("x", "etc", "passwd"):
        assert not (hs_server.data / outside).exists()
        assert not (hs_server.data.parent / outside).exists()


def test_a_sub_too_long_to_store_is_a_clear_401(hs_server: Server) -> None:
    for sub in ("x" * 10_000, "é" * 121, "/" * 81):
        token = hs(claims(sub=sub))
        got = assert_refused(hs_server, _chat_with(hs_server, bearer(token)), 401, None, token)
        # 10,000 bytes make a token larger than any we issue; the others fit in a token
        # but not in a directory name once encoded.
        assert got["error"] in ("bad_user_id", "token_too_large"), (sub[:10], got)
        assert got["error"] == "bad_user_id" or len(token) > 8192


ARCHIVE_TRAVERSALS = [
    "..%2Fcurrent.yaml",
    "..%2F..%2F..%2F.jwt-secret",
    "%2e%2e%2f%2e%2e%2f.jwt-secret",
    "..",
    "%2e%2e",
    ".lock",
    "current.yaml",
    "current.yaml.torn-20260101T000000Z",
    "2026-01-01-00-00-00.yaml%00.txt",
    "2026-01-01-00-00-00.yaml%2F..%2F..%2Fcurrent.yaml",
    "..%5C..%5Ccurrent.yaml",
    "%252e%252e%252fcurrent.yaml",
    "archived",
]


def test_archive_names_with_traversal_are_404(hs_server: Server) -> None:
    assert hs_server.chat("victim", "my secret").status_code == 200
    admin = hs_server.headers("ops", admin=True)
    mallory = hs_server.headers("mallory")
    targets = [f"/archives/{name}" for name in ARCHIVE_TRAVERSALS]
    targets += [f"/users/victim/archives/{name}" for name in ARCHIVE_TRAVERSALS]
    targets += [f"/users/..%2Fvictim/archives/{name}" for name in ARCHIVE_TRAVERSALS[:3]]
    for target in targets:
        headers = admin if target.startswith("/users/") else mallory
        status, _, body = raw(hs_server, "GET", target, headers)
        assert status == 404, (target, status, body[:200])
        assert json.loads(body)["error"] == "not_found", target
        assert b"my secret" not in body and SECRET.encode() not in body
    # Dot segments are resolved by the router before our code sees them: still nothing.
    for target in ("/archives/../dialog", "/users/victim/archives/../../../.jwt-secret"):
        status, _, body = raw(hs_server, "GET", target, admin)
        assert b"my secret" not in body and SECRET.encode() not in body, target


def test_widget_files_cannot_reach_outside_the_widget_directory(hs_server: Server) -> None:
    for target in (
        "/widget/../README.md",
        "/widget/..%2F..%2FREADME.md",
        "/widget/%2e%2e/%2e%2e/pyproject.toml",
        "/widget/....//....//README.md",
        "/widget/%2e%2e%5c%2e%2e%5cREADME.md",
    ):
        status, _, body = raw(hs_server, "GET", target)
        assert status == 404, (target, status)
        assert b"archiver" not in body.lower() or b"not_found" in body, target


# --------------------------------------------------------------------------------------
# Isolation: what A may do to B


def test_one_user_cannot_read_stop_archive_or_subscribe_as_another(tmp_path: Path) -> None:
    server = Server(
        data=tmp_path / "data", log_path=tmp_path / "iso.log", settings={"echo_delay": "0.2"}
    ).start()
    try:
        a, b = server.headers("alice"), server.headers("bob")
        first = server.chat("bob", "bob's private words").json()
        bob_dialog = first["dialog"]
        archived = httpx.post(server.url + "/dialog/archive", headers=b).json()
        assert server.chat("bob", "bob again").status_code == 200
        # Read: the dialog and the archives are always the token's own.
        assert httpx.get(server.url + "/dialog", headers=a).json()["dialog"] is None
        assert httpx.get(server.url + "/archives", headers=a).json() == []
        theirs = httpx.get(f"{server.url}/archives/{archived['archive']}", headers=a)
        assert theirs.status_code == 404 and b"private" not in theirs.content
        # Subscribe "as" bob: the stream is alice's whatever the request says.
        with SSEClient(
            server.url + "", mint("alice"), last_event_id=f"{bob_dialog}:0",
            path="/subscribe?user=bob&last_event_id=" + bob_dialog + ":0",
        ) as sse:  # fmt: skip
            ready = sse.next("ready").data
            assert ready["user"] == "alice" and ready["dialog"] is None
            server.chat("bob", "bob while alice listens")
            server.chat("alice", "alice here")
            assert sse.next("message").data["text"] == "alice here"
            assert all("bob" not in json.dumps(e.data) for e in sse.seen)
        # Stop: alice's stop does not touch bob's reply.
        with httpx.Client(timeout=30) as client:
            pending = threading.Thread(
                target=lambda: results.append(server.chat("bob", "one two three four five"))
            )
            results: list[httpx.Response] = []
            pending.start()
            wait_for(lambda: httpx.get(server.url + "/health").json()["replies"] == 1)
            stop = client.post(server.url + "/chat/stop", headers=a)
            assert stop.json() == {"stopped": False}
            pending.join(30)
            assert "interrupted" not in results[0].json()["reply"]
        # Archive: alice archives alice's (nothing), bob's dialog stays.
        bob_now = httpx.get(server.url + "/dialog", headers=b).json()
        gone = httpx.post(server.url + "/dialog/archive", headers=a).json()
        assert gone["dialog"] != bob_now["dialog"]
        assert httpx.get(server.url + "/dialog", headers=b).json() == bob_now
    finally:
        server.stop()


# --------------------------------------------------------------------------------------
# CORS


def test_cors_answers_only_the_allowed_origins(tmp_path: Path) -> None:
    good = "https://shop.example"
    server = Server(
        data=tmp_path / "data",
        log_path=tmp_path / "cors.log",
        settings={"allowed_origins": f"{good},https://docs.example"},
    ).start()
    bare = Server(data=tmp_path / "d2", log_path=tmp_path / "bare.log").start()
    try:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        ok = httpx.options(server.url + "/chat", headers={"Origin": good, **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == good
        assert "access-control-allow-credentials" not in ok.headers
        for origin in (
            "https://evil.example",
            "https://shop.example.evil.example",
            "http://shop.example",
            "https://shop.example:8443",
            "null",
            "https://SHOP.example.",
        ):
            for target in (server, bare):
                pre = httpx.options(target.url + "/chat", headers={"Origin": origin, **preflight})
                assert "access-control-allow-origin" not in pre.headers, (origin, pre.headers)
                simple = httpx.get(target.url + "/health", headers={"Origin": origin})
                assert "access-control-allow-origin" not in simple.headers, origin
        simple = httpx.get(server.url + "/health", headers={"Origin": good})
        assert simple.headers["access-control-allow-origin"] == good
        assert (
            "access-control-allow-origin"
            not in httpx.get(bare.url + "/health", headers={"Origin": good}).headers
        )
    finally:
        server.stop()
        bare.stop()


# --------------------------------------------------------------------------------------
# Bodies


def _rss_kb(server: Server) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_1_gb_upload_is_refused_after_the_limit_with_memory_flat(
    hs_server: Server, framing: str
) -> None:
    """Streamed from a generator (never stored); the server answers 413 after reading the
    limit (1,000 bytes here) plus the 4 KiB envelope, long before the gigabyte is sent."""
    gigabyte = 1 << 30
    chunk = b"x" * 65536
    rss_before = _rss_kb(hs_server)
    head = [
        "POST /chat HTTP/1.1",
        "Host: x",
        "Content-Type: application/json",
        f"Authorization: Bearer {mint('uploader')}",
    ]
    head.append(
        f"Content-Length: {gigabyte}"
        if framing == "content-length"
        else "Transfer-Encoding: chunked"
    )
    sock = socket.create_connection(("127.0.0.1", hs_server.port), timeout=30)
    sent = 0
    stop = threading.Event()
    peak = [rss_before]

    def frame(data: bytes) -> bytes:
        return data if framing == "content-length" else b"%x\r\n%s\r\n" % (len(data), data)

    def pump() -> None:
        nonlocal sent
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + frame(b'{"message": "'))
            while sent < gigabyte and not stop.is_set():
                sock.sendall(frame(chunk))
                sent += len(chunk)
                if sent % (1 << 20) == 0:
                    peak[0] = max(peak[0], _rss_kb(hs_server))
        except OSError:
            pass  # the server closed the connection: what we wanted

    sender = threading.Thread(target=pump)
    sender.start()
    try:
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            response += piece
    finally:
        stop.set()
        sender.join(30)
        sock.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"error":"too_large"' in response
    assert sent < 64 << 20, f"{sent} bytes went out before the refusal"
    peak[0] = max(peak[0], _rss_kb(hs_server))
    assert peak[0] - rss_before < 32 * 1024, (rss_before, peak[0])
    assert httpx.get(hs_server.url + "/health").status_code == 200
    assert not (hs_server.data / "users" / "uploader").exists()


def _json_chat(server: Server, body: bytes, content_type: str | None = "application/json") -> Any:
    headers = bearer(mint("bodies"))
    if content_type is not None:
        headers["Content-Type"] = content_type
    return lambda: raw(server, "POST", "/chat", headers, body)


@pytest.mark.parametrize(
    ("case", "body", "error"),
    [
        ("nested arrays", b'{"message": ' + b"[" * 2000 + b"]" * 2000 + b"}", "bad_json"),
        ("deeply nested arrays", b"[" * 2400 + b"]" * 2400, "bad_json"),
        ("deeply nested objects", b'{"":' * 1000 + b"1" + b"}" * 1000, "bad_json"),
        ("recursion bomb", b'{"message": ' + b"[" * 100_000, "too_large"),
        ("a 3,000-digit number", b'{"message": 1' + b"0" * 3000 + b"}", "bad_request"),
        ("a 5,000-digit number", b'{"message": 1' + b"0" * 4999 + b"}", "bad_json"),
        ("invalid utf-8", b'{"message": "\xff\xfe"}', "bad_json"),
        ("overlong utf-8", b'{"message": "\xc0\xaf"}', "bad_json"),
        ("utf-16", '{"message": "x"}'.encode("utf-16"), "bad_json"),
        ("utf-8 bom", b'\xef\xbb\xbf{"message": "x"}', "bad_json"),
        ("lone surrogate", b'{"message": "\\udc00"}', "bad_text"),
        ("nan", b'{"message": NaN}', "bad_request"),
        ("duplicate keys", b'{"message": 1, "message": 2}', "bad_request"),
        ("empty body", b"", "bad_json"),
        ("null", b"null", "bad_request"),
    ],
)
def test_malformed_bodies_are_400_and_write_nothing(
    hs_server: Server, case: str, body: bytes, error: str
) -> None:
    status = 413 if error == "too_large" else 400
    got = assert_refused(hs_server, _json_chat(hs_server, body), status)
    assert got["error"] == error, (case, got)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json-patch+json",
        "json",
        "",
    ],
)
def test_wrong_content_types_are_415(hs_server: Server, content_type: str | None) -> None:
    got = assert_refused(hs_server, _json_chat(hs_server, b'{"message": "x"}', content_type), 415)
    assert got["error"] == "unsupported_media_type"


def test_a_server_run_by_a_supervisor_prints_no_token(tmp_path: Path) -> None:
    """stderr that is not a terminal ends up in a log (journald): no demo token there."""
    server = Server(data=tmp_path / "data", log_path=tmp_path / "s.log").start()
    server.stop()
    log = server.log()
    assert "eyJ" not in log
    # Every line is an event (logfmt), the demo banner included: journald can parse it.
    assert all(
        re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z [A-Z]+ [a-z_.]+ ", line) for line in log.splitlines()
    )
    [demo] = server.log_lines("server.demo")
    data = shlex.quote(str(server.data.resolve()))
    assert f'token_command="archiver token demo --data {data}"' in demo, demo


def test_the_log_check_finds_a_leaked_token(tmp_path: Path) -> None:
    """conftest.py's end-of-session check, on a log that does leak."""
    from tests.conftest import token_leaks

    token = mint("leaky")
    clean, leaky = tmp_path / "clean.log", tmp_path / "leaky.log"
    clean.write_text("INFO http.request path=/dialog?access_token=[redacted]\n")
    leaky.write_text(f"INFO oops value={token.split('.')[2]}\n")
    assert token_leaks([clean], [token], [SECRET]) == []
    assert len(token_leaks([leaky], [token], [SECRET])) == 1
    leaky.write_text(f"secret {SECRET}\n")
    assert token_leaks([leaky], [token], [SECRET]) == [f"{leaky}: the secret"]


def test_a_user_id_cannot_forge_log_lines(hs_server: Server) -> None:
    forged = "2020-01-01T00:00:00.000Z ERROR journal.error kind=forged"
    mark = hs_server.log_mark()
    for sub in (f"evil\n{forged}", f"evil\r{forged}", f"evil\u2028{forged}"):
        assert hs_server.chat(sub, f"hi\n{forged}").status_code == 200
        target = f"/archives/x%0A{forged.replace(' ', '%20')}"
        assert raw(hs_server, "GET", target, hs_server.headers(sub))[0] == 404
    # Every line these requests caused is written before the log is judged.
    hs_server.wait_log("request.rejected", 3, since=mark)
    hs_server.wait_log("chat.append", 3, since=mark)
    lines = hs_server.log().splitlines()
    assert not any(line.startswith("2020-01-01") for line in lines)
    assert not any(line.lstrip().startswith(forged[:10]) for line in lines)
