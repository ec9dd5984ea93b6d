from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import Server


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the developer's environment reaches a test."""
    for name in list(os.environ):
        # ARCHIVER_REQUIRE_E2E is the test suite's own switch (CI sets it), not a setting.
        if name.startswith("ARCHIVER_") and name != "ARCHIVER_REQUIRE_E2E":
            monkeypatch.delenv(name)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real `archiver serve` processes; each call gets its own port and log."""
    servers: list[Server] = []

    def make(data: Path | None = None, start: bool = True, **settings: str) -> Server:
        server = Server(
            data=data or tmp_path / "data",
            log_path=tmp_path / f"server-{len(servers)}.log",
            settings={k: str(v) for k, v in settings.items()},
        )
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()
