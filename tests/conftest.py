from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.browser import browser, pages, start_server  # noqa: F401 (fixtures for every file)
from tests.helpers import LOG_FILES, MINTED, SECRET, RedisServer, Server

_RUN = re.compile(rb"[A-Za-z0-9_-]{20,}")
_JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.")


def token_leaks(logs: list[Path], tokens: list[str], secrets: list[str]) -> list[str]:
    """Where a log holds a secret, anything shaped like a JWT, or a piece of a minted
    token (its claims or its signature: base64url runs that never occur by chance)."""
    pieces = {part.encode() for token in tokens for part in token.split(".")[1:] if len(part) >= 20}
    found = []
    for path in dict.fromkeys(logs):
        if not path.exists():
            continue
        data = path.read_bytes()
        found += [f"{path}: the secret" for s in secrets if s.encode() in data]
        if match := _JWT_SHAPE.search(data):
            found.append(f"{path}: a token at byte {match.start()}")
        if pieces & set(_RUN.findall(data)):
            found.append(f"{path}: a minted token")
    return found


@pytest.fixture(scope="session", autouse=True)
def no_token_in_any_log() -> Iterator[None]:
    """At the end of the session, every server log the suite produced is searched for
    every token it minted (tests/helpers.mint, remember) and for the secret."""
    yield
    leaks = token_leaks(LOG_FILES, MINTED, [SECRET])
    summary = f"{len(MINTED)} tokens, {len(set(LOG_FILES))} server logs"
    assert not leaks, f"{summary}; leaked: {leaks[:10]}"
    print(f"\ntoken check: {summary}, no leak")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the developer's environment reaches a test."""
    for name in list(os.environ):
        # ARCHIVER_REQUIRE_E2E (CI sets it) and ARCHIVER_SOAK are the suite's own switches.
        if name.startswith("ARCHIVER_") and name not in ("ARCHIVER_REQUIRE_E2E", "ARCHIVER_SOAK"):
            monkeypatch.delenv(name)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real `archiver serve` processes; each call gets its own port and log.

    At the end each is stopped (SIGTERM) and its log's tail printed (pytest shows it
    when the test failed)."""
    servers: list[Server] = []

    def make(
        data: Path | None = None, start: bool = True, relative_data: bool = False, **settings: str
    ) -> Server:
        server = Server(
            data=data or tmp_path / "data",
            log_path=tmp_path / f"server-{len(servers)}.log",
            settings={k: str(v) for k, v in settings.items()},
            relative_data=relative_data,
        )
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()
        print(f"---- {server.url} log ----\n{server.log()[-6000:]}")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real, empty redis-server of this test's own (tests/helpers.RedisServer)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
