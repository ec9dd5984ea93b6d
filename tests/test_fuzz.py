"""Hypothesis-driven requests against every route of one live server.

Random methods, path segments, query strings, headers, tokens (valid for random user ids,
admin, expired, garbage) and bodies (bytes, JSON, near-misses of a chat). Whatever
arrives: no 500, no traceback in a response, errors in the JSON shape, no token echoed,
and afterwards nothing in the data directory that the layout does not allow, nothing
outside it, and no failure in the server's log.

    pytest tests/test_fuzz.py                      # 600 requests
    ARCHIVER_SOAK=1 pytest tests/test_fuzz.py      # 10,000 requests
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import SOAK, Server, mint, sign, soak
from tests.invariants import stray_files

EXAMPLES = soak(600, 10_000)
ROUTES = [
    ("GET", "/"),
    ("GET", "/review"),
    ("GET", "/widget/{}"),
    ("GET", "/subscribe"),
    ("POST", "/chat"),
    ("POST", "/chat/stop"),
    ("GET", "/dialog"),
    ("POST", "/dialog/archive"),
    ("GET", "/archives"),
    ("GET", "/archives/{}"),
    ("GET", "/users"),
    ("GET", "/users/{}/archives"),
    ("GET", "/users/{}/archives/{}"),
    ("GET", "/admin/feed"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/{}"),
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
NASTY = ["..", "%2e%2e", "..%2F..%2F.jwt-secret", "current.yaml", ".lock", "%00", "a%2Fb"]
NASTY += ["2026-01-01-00-00-00.yaml", "chat.html", "widget.js", "%C0%AE", "~", "%", "%%"]

printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
segment = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=30).map(lambda s: quote(s, safe="")),
    printable.map(lambda s: quote(s, safe="%.~")),
)


@st.composite
def tokens(draw: st.DrawFn) -> str | None:
    kind = draw(st.sampled_from(["none", "user", "admin", "expired", "odd", "garbage"]))
    if kind == "none":
        return None
    if kind == "garbage":
        return draw(printable)
    sub = draw(st.one_of(st.text(min_size=1, max_size=40), st.sampled_from(["a", "b", ".."])))
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 600}
    if kind == "admin":
        claims["role"] = "admin"
    elif kind == "expired":
        claims["exp"] = int(time.time()) - 600
    elif kind == "odd":
        claims[draw(st.sampled_from(["sub", "exp", "role", "nbf", "iss"]))] = draw(
            st.one_of(st.integers(), st.text(max_size=10), st.none(), st.lists(st.integers()))
        )
    try:
        return sign(claims)
    except (TypeError, ValueError):
        return mint("fallback")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=2000),
    st.text(max_size=200).map(lambda t: json.dumps({"message": t}).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["message", "text", "dialog"]), json_values, max_size=3).map(
        lambda d: json.dumps(d).encode()
    ),
    st.sampled_from([b'{"message": "\\ud800"}', b'{"message": "x"', b"\xff\xfe", b"[" * 3000]),
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    method, template = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) < 3:
        method = draw(st.sampled_from(METHODS))
    path = template.format(*[draw(segment) for _ in range(template.count("{}"))])
    query = draw(
        st.dictionaries(
            st.sampled_from(["access_token", "last_event_id", "user", "x", "token"]) | printable,
            printable,
            max_size=3,
        )
    )
    token = draw(tokens())
    headers: dict[str, str] = {}
    where = draw(st.sampled_from(["header", "cookie", "query", "scheme"]))
    if token is not None:
        if where == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif where == "cookie":
            headers["Cookie"] = f"archiver_token={token}"
        elif where == "query":
            query["access_token"] = token
        else:
            headers["Authorization"] = f"{draw(printable)} {token}"
    for name, values in (
        ("Content-Type", ["application/json", "text/plain", "application/json; charset=latin-1"]),
        ("Accept", ["application/json", "text/event-stream", "*/*", "application/yaml"]),
        ("Last-Event-ID", ["d-1:1", ":", "x:99999999999999999999", "d:-1"]),
        ("Origin", ["https://evil.example", "null"]),
        ("X-Forwarded-For", ["1.2.3.4", "::1, evil"]),
    ):
        if draw(st.booleans()):
            headers[name] = draw(st.sampled_from(values) | printable)
    target = path + ("?" + urlencode(query) if query else "")
    return {"method": method, "target": target, "headers": headers, "body": draw(bodies),
            "token": token}  # fmt: skip


def send(server: Server, request: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(request["method"], request["target"], skip_accept_encoding=True)
        for name, value in request["headers"].items():
            conn.putheader(name, value)
        body = request["body"]
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        if headers.get("content-type", "").startswith("text/event-stream"):
            data = response.read1(4096)  # an endless stream: its start is enough
        else:
            data = response.read()
        return response.status, headers, data
    finally:
        conn.close()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("fuzz")
    server = Server(
        data=base / "data",
        log_path=base / "fuzz.log",
        settings={"echo_delay": "0", "max_message_bytes": "500", "disconnect_grace": "0"},
    ).start()
    yield server
    server.stop()


def test_fuzz_every_route_no_500_no_traceback_nothing_outside_the_rules(
    fuzz_server: Server,
) -> None:
    base = fuzz_server.data.parent
    outside = sorted(p.name for p in base.iterdir())
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not SOAK,  # CI: the same requests every run; soak: new ones
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests())
    def one(request: dict[str, Any]) -> None:
        status, headers, body = send(fuzz_server, request)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (request, status, body[:500])
        assert b"Traceback" not in body, request
        json_error = headers.get("content-type", "").startswith("application/json")
        if status >= 400 and json_error and request["method"] != "HEAD":
            payload = json.loads(body)
            assert set(payload) == {"error", "detail"}, payload
        token = request["token"] or ""
        if len(token) >= 20 and status >= 400:
            assert token.encode() not in body, request

    one()
    assert sorted(p.name for p in base.iterdir()) == outside, "nothing appeared outside data/"
    assert stray_files(fuzz_server.data) == []
    log = fuzz_server.log()
    assert "request.failed" not in log and "Traceback" not in log
    print(f"\nfuzz: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")


def test_fuzz_server_still_serves(fuzz_server: Server) -> None:
    assert fuzz_server.chat("after-fuzz", "still here?").status_code == 200
    assert Path(fuzz_server.data / "users").is_dir()
