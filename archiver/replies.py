"""Reply producers behind one interface: an async iterator of text chunks for a dialog.

* ``echo`` (the default) needs nothing and streams ``Echo: <message>`` word by word, so
  the whole streaming path is exercised without a model.
* ``openai``: any OpenAI-compatible ``/chat/completions`` server (OpenAI, vLLM, llama.cpp
  server, Ollama, LiteLLM), streamed (``stream: true``, ``data:`` lines, ``[DONE]``).
* ``n8n``: a webhook that answers with JSON lines or SSE lines of
  ``{"type": "begin"|"item"|"end"|"error", "content"}`` (the Webhook node's streaming
  mode: one begin/end block per streaming node run), plain text lines, or one JSON
  object ``{"output": ...}`` / ``{"text": ...}``. What real n8n sends: docs/upstreams.md.

Every failure becomes a :class:`ReplyError` whose ``detail`` is a sentence a transcript
reader understands; it is journaled as a ``role: error`` message. The one
``httpx.AsyncClient`` is owned by the app's lifespan. Closing a producer's iterator
(``aclose``, which the caller does on stop) closes the upstream response, so a stopped
reply does not keep a model generating.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx
import jwt

from .config import Settings
from .dialogfile import Message

_WORDS = re.compile(r"\s*\S+\s*|\s+")
UPSTREAM_TOKEN_TTL = 60


@dataclass(frozen=True)
class ReplyRequest:
    user: str
    dialog: str
    message: str
    history: Sequence[Message]  # the latest messages, the new user message last


class ReplyError(Exception):
    """The producer failed; ``detail`` is a sentence a transcript reviewer understands."""

    def __init__(
        self, kind: str, detail: str, status: int = 502, upstream_status: int | None = None
    ) -> None:
        super().__init__(detail)
        self.kind = kind  # connect | timeout | http_status | cut | garbage | reported
        self.detail = detail
        self.status = status
        self.upstream_status = upstream_status


class Responder(Protocol):
    name: str
    # How many of the latest messages the producer wants as history (0: none, so the
    # journal is not read at all).
    history_messages: int

    def reply(self, request: ReplyRequest) -> AsyncGenerator[str, None]: ...


def words(text: str) -> list[str]:
    """Split ``text`` into chunks that concatenate back to exactly ``text``."""
    return _WORDS.findall(text)


class Echo:
    """Answers ``Echo: <message>``, one word every ``delay`` seconds."""

    name = "echo"
    history_messages = 0

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def reply(self, request: ReplyRequest) -> AsyncGenerator[str, None]:
        for chunk in words(f"Echo: {request.message}"):
            if self.delay:
                await anyio.sleep(self.delay)
            yield chunk


# ---------------------------------------------------------------------------------------
# HTTP upstreams


def make_client(settings: Settings) -> httpx.AsyncClient:
    """The one outbound client: explicit timeouts and bounded connections."""
    timeout = httpx.Timeout(
        connect=min(10.0, settings.upstream_timeout),
        read=settings.upstream_timeout,
        write=min(30.0, settings.upstream_timeout),
        pool=min(10.0, settings.upstream_timeout),
    )
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    return httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False)


def _transport_error(exc: httpx.HTTPError, what: str) -> ReplyError:
    if isinstance(exc, httpx.TimeoutException):
        return ReplyError("timeout", f"The {what} did not answer in time.", status=504)
    if isinstance(exc, httpx.ConnectError):
        return ReplyError("connect", f"The {what} could not be reached.")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return ReplyError("cut", f"The {what}'s answer was cut off before it ended.")
    return ReplyError("connect", f"The request to the {what} failed ({type(exc).__name__}).")


async def _check_status(response: httpx.Response, what: str) -> None:
    if response.status_code < 400:
        return
    await response.aclose()
    raise ReplyError(
        "http_status",
        f"The {what} answered with an error (HTTP {response.status_code}).",
        upstream_status=response.status_code,
    )


async def _lines(response: httpx.Response, what: str) -> AsyncIterator[str]:
    try:
        async for line in response.aiter_lines():
            yield line
    except UnicodeDecodeError:
        raise ReplyError("garbage", f"The {what} sent something that is not text.") from None


def _history_messages(request: ReplyRequest) -> list[dict[str, str]]:
    return [
        {"role": m.role, "content": m.text}
        for m in request.history
        if m.role in ("user", "assistant")
    ]


class OpenAI:
    """An OpenAI-compatible chat-completions server, streamed."""

    name = "openai"

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        assert settings.upstream_url and settings.upstream_model
        self.url = settings.upstream_url.rstrip("/") + "/chat/completions"
        self.model = settings.upstream_model
        self.api_key = settings.upstream_api_key
        self.system_prompt = settings.system_prompt
        self.history_messages = settings.history_messages
        self.client = client

    def payload(self, request: ReplyRequest) -> dict[str, Any]:
        messages = _history_messages(request)
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return {"model": self.model, "stream": True, "messages": messages}

    async def reply(self, request: ReplyRequest) -> AsyncGenerator[str, None]:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        what = "model server"
        try:
            async with self.client.stream(
                "POST", self.url, json=self.payload(request), headers=headers
            ) as response:
                await _check_status(response, what)
                done = False
                async for line in _lines(response, what):
                    chunk, done = _openai_line(line)
                    if chunk:
                        yield chunk
                    if done:
                        break
                if not done:
                    raise ReplyError("cut", "The model server's answer ended before it was done.")
        except httpx.HTTPError as exc:
            raise _transport_error(exc, what) from None


def _openai_line(line: str) -> tuple[str, bool]:
    """(text, finished) for one line of a chat-completions stream."""
    line = line.strip()
    if not line.startswith("data:"):
        return "", False  # blank lines, comments, event: lines
    data = line[5:].strip()
    if data == "[DONE]":
        return "", True
    try:
        body = json.loads(data)
    except ValueError:
        raise ReplyError("garbage", "The model server sent a line that is not JSON.") from None
    if not isinstance(body, dict):
        raise ReplyError("garbage", "The model server sent something other than a chunk.")
    if "error" in body:
        error = body["error"]
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise ReplyError("reported", f"The model server reported an error: {message}.")
    text = ""
    for choice in body.get("choices") or []:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if isinstance(content, str):
            text += content
    return text, False


class N8n:
    """An n8n webhook: streaming (JSON lines or SSE), plain text, or one JSON object."""

    name = "n8n"

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        assert settings.upstream_url
        self.url = settings.upstream_url
        self.api_key = settings.upstream_api_key
        self.jwt_secret = settings.upstream_jwt_secret
        self.history_messages = settings.history_messages
        self.client = client

    def payload(self, request: ReplyRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message": request.message,
            "dialog": request.dialog,
            "user": request.user,
            "history": _history_messages(request),
        }
        if self.jwt_secret:
            now = int(time.time())
            claims = {"sub": request.user, "dialog": request.dialog, "iat": now}
            claims["exp"] = now + UPSTREAM_TOKEN_TTL
            body["jwt_token"] = jwt.encode(claims, self.jwt_secret, algorithm="HS256")
        return body

    async def reply(self, request: ReplyRequest) -> AsyncGenerator[str, None]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        what = "n8n webhook"
        try:
            async with self.client.stream(
                "POST", self.url, json=self.payload(request), headers=headers
            ) as response:
                await _check_status(response, what)
                async for chunk in _n8n_chunks(response, what):
                    yield chunk
        except httpx.HTTPError as exc:
            raise _transport_error(exc, what) from None


N8N_CHUNK_TYPES = ("begin", "item", "end", "error")


@dataclass
class _N8nEvents:
    """An n8n stream's chunks, read one line at a time, and its ``begin``/``end`` blocks."""

    open: int = 0
    closed: int = 0

    def read(self, line: str) -> str:
        """The reply text in one chunk line (often none); an ``error`` chunk raises."""
        event = _json_object(line)
        if event is None or not isinstance(event.get("type"), str):
            raise ReplyError("garbage", "The n8n webhook sent a line we cannot read.")
        kind = event["type"]
        if kind == "error":
            raise ReplyError("reported", _n8n_error(event))
        if kind == "begin":
            self.open += 1
        elif kind == "end":
            self.open, self.closed = max(0, self.open - 1), self.closed + 1
        content = event.get("content")
        return content if kind == "item" and isinstance(content, str) else ""

    @property
    def whole(self) -> bool:
        return self.closed > 0 and self.open == 0


async def _n8n_chunks(response: httpx.Response, what: str) -> AsyncIterator[str]:
    """Decide from the first line whether this is an event stream, JSON, or text.

    A real n8n stream is a run of blocks, ``begin`` ... ``item``s ... ``end``, one per
    node run that streams (an AI Agent opens one per model call, so a reply after a tool
    call is a second block): ``end`` closes a block, not the reply, and the reply is
    whole when the response ends with a block closed and none open. Chunk types this
    version does not know (newer n8n adds some, such as tool-call events) carry no reply
    text and are passed over.
    """
    mode: str | None = None  # "events" | "json" | "text"
    buffered: list[str] = []
    first_text = True
    events = _N8nEvents()
    async for raw in _lines(response, what):
        line = raw[5:].lstrip() if raw.startswith("data:") else raw
        if mode is None:
            if not line.strip() or raw.startswith((":", "event:", "id:")):
                continue
            event = _json_object(line)
            if event is not None and event.get("type") in N8N_CHUNK_TYPES:
                mode = "events"
            elif response.headers.get("content-type", "").startswith("application/json"):
                mode = "json"
            else:
                mode = "text"
        if mode == "events":
            if not line.strip() or raw.startswith((":", "event:", "id:")):
                continue
            if text := events.read(line):
                yield text
        elif mode == "json":
            buffered.append(raw)
        else:
            yield raw if first_text else "\n" + raw
            first_text = False
    if mode is None:
        # What n8n's streaming mode sends when no node in the workflow streams.
        raise ReplyError("garbage", "The n8n webhook's answer was empty.")
    if mode == "events" and not events.whole:
        raise ReplyError("cut", "The n8n webhook's answer ended before it was done.")
    if mode == "json":
        yield _n8n_output("\n".join(buffered))


def _n8n_error(event: dict[str, Any]) -> str:
    """The sentence for an n8n ``error`` chunk. n8n sends the node error's description
    as ``content``, which is null for a plain error (a Code node that throws), so the
    failing node's name, from the chunk's metadata, is what a reviewer gets then."""
    content = event.get("content")
    if isinstance(content, str) and content.strip():
        return f"The n8n workflow reported an error: {content}."
    metadata = event.get("metadata")
    node = metadata.get("nodeName") if isinstance(metadata, dict) else None
    if isinstance(node, str) and node:
        return f"The n8n workflow failed at its step {node!r}."
    return "The n8n workflow reported an error."


def _json_object(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _n8n_output(body: str) -> str:
    try:
        value = json.loads(body)
    except ValueError:
        raise ReplyError("garbage", "The n8n webhook answered with JSON we cannot read.") from None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        for key in ("output", "text"):
            if isinstance(value.get(key), str):
                return str(value[key])
    raise ReplyError("garbage", "The n8n webhook's JSON has no 'output' or 'text'.")


def make_responder(settings: Settings, client: httpx.AsyncClient | None = None) -> Responder:
    if settings.upstream == "echo":
        return Echo(settings.echo_delay)
    assert client is not None, "HTTP upstreams need the lifespan's client"
    if settings.upstream == "openai":
        return OpenAI(settings, client)
    return N8n(settings, client)
