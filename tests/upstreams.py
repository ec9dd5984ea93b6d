"""Real HTTP upstreams for the reply tests: one Starlette app, served by uvicorn on a free
loopback port in a thread, one route per behaviour. It records every request it gets.

    /openai/chat/completions         OpenAI-format stream: role-only first chunk, content
                                     chunks, a finish_reason chunk, a usage chunk when
                                     stream_options.include_usage asks, keep-alive
                                     comments, [DONE]
    /openai-usage/chat/completions   the same, with the usage chunk always (vLLM's
                                     --enable-force-include-usage, LiteLLM do this)
    /openai-error/chat/completions   a stream that carries an `error` object mid-way
    /echo/chat/completions           streams the last user message back, a word every
                                     50 ms (the n8n tier's agent: it shows what n8n sent)
    /n8n/stream                      n8n JSON lines: begin, items, end
    /n8n/sse                         the same as SSE `data:` lines
    /n8n/blocks                      two begin/end blocks (an agent's model calls around a
                                     tool call), a chunk type this version does not know
    /n8n/unclosed                    begin, items, then the response ends with no end
    /n8n/empty                       200 and an empty body (streaming, no node streams)
    /n8n/node-error                  an error chunk as n8n sends one for a node that
                                     throws: content null, the node in the metadata
    /n8n/json                        one JSON object {"output": ...}
    /n8n/text                        plain text lines
    /slow/chat/completions           a token every 200 ms
    /hang/chat/completions           accepts, then never answers
    /fail/chat/completions           HTTP 500
    /cut/chat/completions            two tokens, then the connection is dropped
    /garbage/chat/completions        `data:` lines that are not JSON

The OpenAI chunks are the ``openai`` package's own models (``ChatCompletionChunk``,
``CompletionUsage``, ``ErrorObject``), validated when built and serialized the way the
API sends them (fields set to null stay null, fields never set are absent), so the fake
cannot drift into a shape the SDK would not produce or read.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming
from openai.types.completion_usage import CompletionUsage
from openai.types.shared import ErrorObject
from pydantic import BaseModel, ConfigDict, TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from archiver.replies import words
from tests.helpers import free_port, wait_for

WORDS = ["Hello", " from", " the", " model", "."]
MODEL = "test-model"


CREATED = int(time.time())
KEEP_ALIVE = ": keep-alive\n\n"  # what OpenRouter and others send while a model thinks


def sse(model: BaseModel) -> str:
    """One SSE event of a chat-completions stream: the model as the API serializes it."""
    return f"data: {model.model_dump_json(exclude_unset=True)}\n\n"


def chunk(
    content: str | None = None, role: str | None = None, finish_reason: str | None = None
) -> str:
    """A ``chat.completion.chunk`` with one choice: a role-only delta, a content delta, or
    (``finish_reason``) an empty delta that ends the choice."""
    delta = ChoiceDelta()
    if role is not None:
        delta = ChoiceDelta(role=role)  # type: ignore[arg-type]
    elif content is not None:
        delta = ChoiceDelta(content=content)
    choice = Choice(index=0, delta=delta, logprobs=None, finish_reason=finish_reason)  # type: ignore[arg-type]
    return sse(
        ChatCompletionChunk(
            id="chatcmpl-fake",
            object="chat.completion.chunk",
            created=CREATED,
            model=MODEL,
            system_fingerprint="fp_fake",
            choices=[choice],
        )
    )


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> str:
    """The last chunk when ``stream_options.include_usage`` is set: no choices, a usage."""
    usage = CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    return sse(
        ChatCompletionChunk(
            id="chatcmpl-fake",
            object="chat.completion.chunk",
            created=CREATED,
            model=MODEL,
            choices=[],
            usage=usage,
        )
    )


def error_event(message: str) -> str:
    """An ``error`` object in the stream, as the API sends one when a model fails mid-way."""
    error = ErrorObject(message=message, type="server_error", param=None, code="overloaded")
    return f"data: {json.dumps({'error': error.model_dump(exclude_unset=True)})}\n\n"


def text_of(content: str | list[dict[str, Any]]) -> str:
    """A message's text: a string, or the text parts of a list (how some clients send it)."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


# The strictest check the SDK's request types allow: pydantic validates the body against
# the SDK's own `CompletionCreateParamsStreaming` TypedDict in strict mode (no coercion: a
# "true" string is not `stream: true`) and with unknown keys forbidden, at every level.
# (TypeAdapter refuses a config on a TypedDict itself; a one-item list carries it down.)
STREAMING_PARAMS: TypeAdapter[list[CompletionCreateParamsStreaming]] = TypeAdapter(
    list[CompletionCreateParamsStreaming], config=ConfigDict(extra="forbid", strict=True)
)


def validate_request_body(body: dict[str, Any]) -> dict[str, Any]:
    [params] = STREAMING_PARAMS.validate_python([body])
    # `messages` is an Iterable in the SDK's types, which pydantic validates lazily, as it
    # is consumed: consume it, so each message is checked against the message params.
    return {**params, "messages": list(params["messages"])}


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


async def openai_stream(words: list[str], usage: bool) -> AsyncIterator[str]:
    """A complete chat-completions stream of ``words``, as OpenAI's API sends it."""
    yield chunk(role="assistant")
    yield KEEP_ALIVE
    for word in words:
        yield chunk(word)
    yield chunk(finish_reason="stop")
    if usage:
        yield usage_chunk(prompt_tokens=7, completion_tokens=len(words))
    yield "data: [DONE]\n\n"


@dataclass
class Upstream:
    port: int = field(default_factory=free_port)
    requests: list[dict[str, Any]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # paths whose stream the client closed
    hang_forever: asyncio.Event | None = None
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _record(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        self.requests.append(
            {"path": request.url.path, "headers": dict(request.headers), "body": body}
        )
        return body  # type: ignore[no-any-return]

    def _stream(self, path: str, gen: AsyncIterator[str], media: str) -> StreamingResponse:
        async def watched() -> AsyncIterator[str]:
            try:
                async for part in gen:
                    yield part
            finally:
                self.closed.append(path)

        return StreamingResponse(watched(), media_type=media)

    async def openai(self, request: Request) -> Response:
        body = await self._record(request)
        stream = openai_stream(WORDS, usage=wants_usage(body))
        return self._stream(request.url.path, stream, "text/event-stream")

    async def openai_usage(self, request: Request) -> Response:
        await self._record(request)
        stream = openai_stream(WORDS, usage=True)
        return self._stream(request.url.path, stream, "text/event-stream")

    async def openai_error(self, request: Request) -> Response:
        await self._record(request)

        async def gen() -> AsyncIterator[str]:
            yield chunk(role="assistant")
            yield chunk("Partial")
            yield error_event("model overloaded")

        return self._stream(request.url.path, gen(), "text/event-stream")

    async def echo(self, request: Request) -> Response:
        body = await self._record(request)
        last = text_of([m for m in body["messages"] if m["role"] == "user"][-1]["content"])

        async def gen() -> AsyncIterator[str]:
            async for part in openai_stream(words(last), usage=wants_usage(body)):
                if part.startswith("data: {") and '"content"' in part:
                    await asyncio.sleep(0.05)  # so a reply's chunks arrive one by one
                yield part

        return self._stream(request.url.path, gen(), "text/event-stream")

    async def slow(self, request: Request) -> Response:
        await self._record(request)

        async def gen() -> AsyncIterator[str]:
            for i in range(50):
                await asyncio.sleep(0.2)
                yield chunk(f"w{i} ")
            yield "data: [DONE]\n\n"

        return self._stream(request.url.path, gen(), "text/event-stream")

    async def hang(self, request: Request) -> Response:
        await self._record(request)
        await asyncio.sleep(3600)
        return Response("never")

    async def fail(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"error": "boom"}, status_code=500)

    async def cut(self, request: Request) -> Response:
        await self._record(request)

        async def gen() -> AsyncIterator[str]:
            yield chunk("Half")
            yield chunk(" an answer")
            await asyncio.sleep(0.05)
            raise RuntimeError("upstream crashed mid-stream")  # uvicorn drops the connection

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def garbage(self, request: Request) -> Response:
        await self._record(request)

        async def gen() -> AsyncIterator[str]:
            yield "data: {not json at all\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def n8n_stream(self, request: Request) -> Response:
        await self._record(request)

        async def gen() -> AsyncIterator[str]:
            yield json.dumps({"type": "begin", "metadata": {}}) + "\n"
            for word in WORDS:
                yield json.dumps({"type": "item", "content": word}) + "\n"
            yield json.dumps({"type": "end"}) + "\n"

        return self._stream(request.url.path, gen(), "application/json")

    async def n8n_blocks(self, request: Request) -> Response:
        await self._record(request)

        async def gen() -> AsyncIterator[str]:
            for block in (WORDS[:2], WORDS[2:]):
                yield json.dumps({"type": "begin", "metadata": {"nodeName": "AI Agent"}}) + "\n"
                for word in block:
                    yield json.dumps({"type": "item", "content": word}) + "\n"
                yield json.dumps({"type": "end", "metadata": {"nodeName": "AI Agent"}}) + "\n"
                if block is not WORDS[2:]:
                    yield json.dumps({"type": "tool-call-start", "content": "lookup"}) + "\n"

        return self._stream(request.url.path, gen(), "application/json")

    async def n8n_unclosed(self, request: Request) -> Response:
        await self._record(request)

        async def gen() -> AsyncIterator[str]:
            yield json.dumps({"type": "begin"}) + "\n"
            yield json.dumps({"type": "item", "content": "Half"}) + "\n"

        return self._stream(request.url.path, gen(), "application/json")

    async def n8n_empty(self, request: Request) -> Response:
        await self._record(request)
        return Response(b"", media_type="application/json; charset=utf-8")

    async def n8n_node_error(self, request: Request) -> Response:
        await self._record(request)

        async def gen() -> AsyncIterator[str]:
            meta = {"nodeName": "Check order", "runIndex": 0, "itemIndex": 0}
            yield json.dumps({"type": "error", "content": None, "metadata": meta}) + "\n"

        return self._stream(request.url.path, gen(), "application/json; charset=utf-8")

    async def n8n_sse(self, request: Request) -> Response:
        await self._record(request)

        async def gen() -> AsyncIterator[str]:
            for word in WORDS:
                yield "data: " + json.dumps({"type": "item", "content": word}) + "\n\n"
            yield "data: " + json.dumps({"type": "end"}) + "\n\n"

        return self._stream(request.url.path, gen(), "text/event-stream")

    async def n8n_json(self, request: Request) -> Response:
        body = await self._record(request)
        return JSONResponse({"output": f"n8n says: {body['message']}"})

    async def n8n_text(self, request: Request) -> Response:
        await self._record(request)
        return Response("line one\nline two", media_type="text/plain")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/openai/chat/completions", self.openai, methods=["POST"]),
                Route("/openai-usage/chat/completions", self.openai_usage, methods=["POST"]),
                Route("/openai-error/chat/completions", self.openai_error, methods=["POST"]),
                Route("/echo/chat/completions", self.echo, methods=["POST"]),
                Route("/slow/chat/completions", self.slow, methods=["POST"]),
                Route("/hang/chat/completions", self.hang, methods=["POST"]),
                Route("/fail/chat/completions", self.fail, methods=["POST"]),
                Route("/cut/chat/completions", self.cut, methods=["POST"]),
                Route("/garbage/chat/completions", self.garbage, methods=["POST"]),
                Route("/n8n/stream", self.n8n_stream, methods=["POST"]),
                Route("/n8n/sse", self.n8n_sse, methods=["POST"]),
                Route("/n8n/blocks", self.n8n_blocks, methods=["POST"]),
                Route("/n8n/unclosed", self.n8n_unclosed, methods=["POST"]),
                Route("/n8n/node-error", self.n8n_node_error, methods=["POST"]),
                Route("/n8n/empty", self.n8n_empty, methods=["POST"]),
                Route("/n8n/json", self.n8n_json, methods=["POST"]),
                Route("/n8n/text", self.n8n_text, methods=["POST"]),
            ]
        )

    def start(self) -> Upstream:
        config = uvicorn.Config(
            self.app(), host="127.0.0.1", port=self.port, log_level="critical", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server is not None and self.server.started, 10, "the upstream")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.server.force_exit = True
        if self.thread is not None:
            self.thread.join(5)

    def wait_closed(self, path: str, timeout: float = 5) -> None:
        wait_for(
            lambda: path in self.closed,
            timeout,
            f"the upstream stream {path} to be closed",
            show=lambda: self.closed,
        )
