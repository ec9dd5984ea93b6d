"""One line per event, for grep.

Every line is ``<UTC time> <LEVEL> <event> key=value ...`` (logfmt), or one JSON object
with ``ARCHIVER_LOG_FORMAT=json``. Event names are stable and documented in the README.
Call sites say ``log.info("dialog.archived", user=..., reason=...)``: the event name is the
message and the fields travel in ``extra`` so the formatter, not the caller, decides quoting.

Secrets never reach a line: values are passed through :func:`scrub`, which removes
anything shaped like a JWT and any ``access_token=``/``token=``/``ticket=`` query value, and
uvicorn's access log is rewritten to a ``http.request`` event without the query string's secrets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import Settings

LOGGER_NAME = "archiver"
_FIELDS = "archiver_fields"

# Three base64url segments, the first starting like a JSON object header ("eyJ").
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_QUERY_SECRET = re.compile(r"((?:access_token|token|api_key|key|jwt_token|ticket)=)[^&\s\"]*", re.I)
_BEARER = re.compile(r"(Bearer\s+)\S+", re.I)
_NEEDS_QUOTES = re.compile(r'[\s"=\\]|^$')
# What each pattern above needs: most values (ids, paths, reasons) have none of it, and one
# search costs less than the three substitutions (every field of every line goes through).
_MAYBE_SECRET = re.compile(r"eyJ|=|bearer", re.I)


# Characters that end a line for some readers (Python's splitlines, JavaScript, some log
# viewers) but that JSON leaves as they are: written escaped, one event stays one line.
_LINE_BREAKS = {c: f"\\u{c:04x}" for c in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}
# Looked for first: translate() looks up every character of the line in the table (~2 us
# a line, a fifth of formatting one), and almost no line has any of them.
_ANY_BREAK = re.compile("[" + "".join(map(chr, _LINE_BREAKS)) + "]")


def one_line(text: str) -> str:
    return text.translate(_LINE_BREAKS) if _ANY_BREAK.search(text) else text


def scrub(text: str) -> str:
    """Remove anything that looks like a credential from ``text``."""
    if _MAYBE_SECRET.search(text) is None:
        return text
    text = _JWT.sub("[token]", text)
    text = _QUERY_SECRET.sub(r"\1[redacted]", text)
    return _BEARER.sub(r"\1[redacted]", text)


class EventLogger:
    """``log.info("event.name", key=value)`` on top of a stdlib logger."""

    def __init__(self, name: str = LOGGER_NAME) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={_FIELDS: fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)


log = EventLogger()


# Short texts already written, and how: the same user, dialog, role and responder come
# back in every line of a chat, and each costs two regex searches. Only texts that scrub()
# left alone are kept (nothing secret-looking is held here), and the table is bounded.
_written: dict[str, str] = {}
_WRITTEN_MAX = 4096
_WRITTEN_CHARS = 64


def _value(value: Any) -> str:
    if type(value) is str:
        known = _written.get(value)
        if known is not None:
            return known
        text = _text(value)
        if len(value) <= _WRITTEN_CHARS and text is value:
            if len(_written) >= _WRITTEN_MAX:
                _written.clear()
            _written[value] = text
        return text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return _text(str(value))


def _text(value: str) -> str:
    text = scrub(value)
    if _NEEDS_QUOTES.search(text):
        text = json.dumps(text, ensure_ascii=False)
    return text


_last_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _timestamp(created: float) -> str:
    # Most lines share their second with the one before: format it once per second. One
    # tuple, read and replaced whole, so threads logging at once never mix two seconds.
    global _last_second
    second = int(created)
    cached = _last_second
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int(created * 1000) % 1000:03d}Z"


# Fields every line of this process carries, first (`worker=2` under `serve --workers`):
# N workers share one stderr, and a line must say which of them wrote it.
_tags: dict[str, Any] = {}


def tag(**fields: Any) -> None:
    """Add ``fields`` to every line this process logs from now on."""
    _tags.update(fields)


def _event_and_fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    event, fields = _untagged(record)
    return event, ({**_tags, **fields} if _tags else fields)


def _untagged(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    fields = getattr(record, _FIELDS, None)
    if fields is not None:
        return record.getMessage(), fields
    if record.name == "uvicorn.access" and isinstance(record.args, tuple):
        return "http.request", _access_fields(record.args)
    # Other libraries' lines (uvicorn's lifecycle messages, warnings): keep them on one line.
    message = record.getMessage().replace("\n", " | ")
    event = record.name.split(".")[0] + ".log"
    extra: dict[str, Any] = {"logger": record.name, "msg": message}
    if record.exc_info and record.exc_info[0] is not None:
        extra["exc"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
    return event, extra


def _access_fields(args: tuple[Any, ...]) -> dict[str, Any]:
    # uvicorn passes (client, method, full_path, http_version, status).
    client, method, path, _version, status = (list(args) + [None] * 5)[:5]
    return {"method": method, "path": scrub(str(path)), "status": status, "client": client}


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event, fields = _event_and_fields(record)
        parts = [_timestamp(record.created), record.levelname, event]
        parts += [f"{key}={_value(val)}" for key, val in fields.items() if val is not None]
        return one_line(" ".join(parts))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event, fields = _event_and_fields(record)
        body: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname}
        body["event"] = event
        for key, val in fields.items():
            if val is None:
                continue
            if isinstance(val, str):
                val = scrub(val)
            elif not isinstance(val, int | float | bool):
                val = scrub(str(val))
            body[key] = val
        return one_line(json.dumps(body, ensure_ascii=False))


class _PerLoopTurn:
    """A stream handler that writes the lines of one event-loop turn in one write().

    A chat logs five lines, and each line's write() and flush cost ~20 us of the event
    loop's time when stderr or ARCHIVER_LOG_FILE is a file, as much as formatting it.
    Lines logged on a thread with a running loop are written at the end of that loop turn
    (a ``call_soon``), before the loop waits for anything; lines from other threads, or
    with no loop running, are written at once, after any that wait. ``flush()`` (also
    run at exit by logging.shutdown) writes whatever waits.
    """

    _waiting: list[str]

    def emit(self, record: logging.LogRecord) -> None:
        assert isinstance(self, logging.StreamHandler)
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        # Looked up, not imported: a process that never imported asyncio (the CLI) runs no
        # loop, and importing it costs the CLI's start-up ~15 ms. _get_running_loop: None
        # instead of an exception to catch (a context manager a line cost ~1 us).
        running = sys.modules.get("asyncio")
        loop = None if running is None else running._get_running_loop()
        if not self._waiting and loop is not None:
            loop.call_soon(self.flush)
        self._waiting.append(line)
        if loop is None:
            self.flush()

    def flush(self) -> None:
        assert isinstance(self, logging.StreamHandler)
        self.acquire()
        try:
            if self._waiting:
                lines, self._waiting = self._waiting, []
                self.stream.write("".join(lines))
            logging.StreamHandler.flush(self)
        finally:
            self.release()


class _StderrHandler(_PerLoopTurn, logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self._waiting = []


class _FileHandler(_PerLoopTurn, logging.FileHandler):
    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self._waiting = []


def _handlers(settings: Settings) -> list[logging.Handler]:
    formatter: logging.Formatter
    formatter = JsonFormatter() if settings.log_format == "json" else LogfmtFormatter()
    handlers: list[logging.Handler] = [_StderrHandler()]
    if settings.log_file is not None:
        Path(settings.log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(_FileHandler(settings.log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
    return handlers


@contextlib.contextmanager
def for_command(settings: Settings) -> Iterator[None]:
    """Our events to stderr and the log file while a CLI command logs one (``archiver
    rm``: ``archive.deleted``), then the logging the process had before, restored."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (logger.handlers, logger.level, logger.propagate)
    handlers = _handlers(settings)
    logger.handlers, logger.propagate = list(handlers), False
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for handler in handlers:
            handler.flush()
            if isinstance(handler, logging.FileHandler):
                handler.close()
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])


def setup(settings: Settings) -> None:
    """Route our events and uvicorn's through one formatter to stderr (and the log file)."""
    handlers = _handlers(settings)
    # No formatter of ours prints where a call came from, or the thread and process: the
    # logging HOWTO's "Optimization" section turns off what finding them out costs.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    level = logging.getLevelName(settings.log_level.upper())
    for name in (LOGGER_NAME, "uvicorn", "uvicorn.error", "uvicorn.access", "sse_starlette"):
        logger = logging.getLogger(name)
        logger.handlers = list(handlers) if name in (LOGGER_NAME, "uvicorn") else []
        logger.propagate = name not in (LOGGER_NAME, "uvicorn")
        logger.setLevel(level if isinstance(level, int) else logging.INFO)
    access = logging.getLogger("uvicorn.access")
    access.disabled = not settings.access_log
    # sse-starlette logs each chunk at DEBUG, with its payload: never let that through.
    logging.getLogger("sse_starlette").setLevel(max(logging.INFO, access.level))
