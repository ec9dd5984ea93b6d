from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from archiver.logs import JsonFormatter, LogfmtFormatter, scrub

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLWJ5dGVz"


def record(event: str, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("archiver", logging.INFO, __file__, 1, event, None, None)
    rec.archiver_fields = fields  # type: ignore[attr-defined]
    rec.created = 1795256100.004
    return rec


def test_logfmt_line_has_time_level_event_and_quoted_fields() -> None:
    line = LogfmtFormatter().format(
        record("dialog.archived", user="a1", reason="disconnect", file="a b", ms=3.14, skip=None)
    )
    assert line == (
        '2026-11-21T10:15:00.004Z INFO dialog.archived user=a1 reason=disconnect file="a b" ms=3.14'
    )


def test_one_line_even_for_multiline_values() -> None:
    line = LogfmtFormatter().format(record("request.failed", detail="one\ntwo"))
    assert "\n" not in line and 'detail="one\\ntwo"' in line


def test_json_format() -> None:
    body = json.loads(JsonFormatter().format(record("sse.connect", user="u", conn="c-1")))
    assert body["event"] == "sse.connect" and body["user"] == "u" and body["level"] == "INFO"


def test_tokens_never_reach_a_line() -> None:
    assert JWT not in scrub(f"token {JWT} here")
    assert scrub("/subscribe?access_token=abc.def&x=1") == "/subscribe?access_token=[redacted]&x=1"
    assert scrub("Authorization: Bearer abc") == "Authorization: Bearer [redacted]"
    line = LogfmtFormatter().format(record("auth.rejected", path=f"/dialog?access_token={JWT}"))
    assert JWT not in line


def test_uvicorn_access_log_becomes_an_http_request_event() -> None:
    rec = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/subscribe?access_token={JWT}", "1.1", 200),
        None,
    )
    line = LogfmtFormatter().format(rec)
    assert (
        ' INFO http.request method=GET path="/subscribe?access_token=[redacted]" status=200' in line
    )
    assert JWT not in line


def test_setup_writes_the_same_lines_to_the_log_file(tmp_path: Path) -> None:
    from archiver import logs
    from archiver.config import Settings

    path = tmp_path / "logs" / "archiver.log"
    logs.setup(Settings(log_file=path, log_format="json", log_level="INFO"))
    try:
        logs.log.info("sse.connect", user="u1", conn="c-1")
        logs.log.debug("hidden.event")
        for handler in logging.getLogger("archiver").handlers:
            handler.flush()
        lines = path.read_text().splitlines()
        assert [json.loads(line)["event"] for line in lines] == ["sse.connect"]
    finally:  # setup() configures process-global loggers: undo it for the other tests
        for name in ("archiver", "uvicorn"):
            for handler in logging.getLogger(name).handlers:
                handler.close()
            logging.getLogger(name).handlers = []


class _Writes:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


def _handler(tmp_path: Path) -> tuple[logging.Handler, _Writes]:
    from archiver import logs

    handler = logs._FileHandler(tmp_path / "archiver.log")
    handler.setFormatter(LogfmtFormatter())
    handler.stream.close()
    stream = handler.stream = _Writes()  # type: ignore[assignment]
    return handler, stream


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_lines_of_one_event_loop_turn_leave_in_one_write(tmp_path: Path) -> None:
    handler, stream = _handler(tmp_path)
    for n in range(3):
        handler.handle(record("chat.append", seq=n))
    assert stream.writes == []  # until the loop's turn ends
    await asyncio.sleep(0)
    assert len(stream.writes) == 1 and stream.writes[0].count(" chat.append seq=") == 3
    handler.handle(record("chat.append", seq=3))
    handler.flush()  # also what logging.shutdown() does at exit
    assert len(stream.writes) == 2


def test_lines_outside_an_event_loop_are_written_at_once(tmp_path: Path) -> None:
    handler, stream = _handler(tmp_path)
    handler.handle(record("chat.append", seq=1))
    assert len(stream.writes) == 1


def test_a_tagged_process_names_itself_on_every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from archiver import logs

    monkeypatch.setattr(logs, "_tags", {})
    logs.tag(worker=2)
    line = LogfmtFormatter().format(record("sse.connect", user="u"))
    assert line.endswith(" INFO sse.connect worker=2 user=u")
    assert json.loads(JsonFormatter().format(record("sse.connect")))["worker"] == 2
