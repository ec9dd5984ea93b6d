"""Races between processes sharing one data directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.helpers import Server
from tests.invariants import check_exactly_once

Make = Callable[..., Server]


def test_a_sweeper_leaves_alone_a_reply_streaming_on_another_process(
    make_server: Make, tmp_path: Path
) -> None:
    """A reply longer than the session timeout, streaming on one process, while the other
    process's sweeper looks at the journal: the question and its answer stay together."""
    data = tmp_path / "data"
    streaming = make_server(data=data, echo_delay="0.1", session_timeout="0.3")
    make_server(data=data, session_timeout="0.3", sweep_interval="0.1")
    text = "one two three four five six seven eight nine ten"
    response = streaming.chat("slowpoke", text)
    assert response.status_code == 200
    check_exactly_once(data / "users", "slowpoke", [(text, response.json()["reply"]["text"])])
