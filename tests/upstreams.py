"""Real HTTP upstreams for the reply tests: one Starlette app, served by uvicorn on a free
loopback port in a thread, one route per behaviour. It records every request it gets.

    /openai/chat/completions         OpenAI-format stream (role-only delta, empty delta, [DONE])
    /openai-error/chat/completions   a stream that carries an `error` object
    /n8n/stream                      n8n JSON lines: begin, items, end
    /n8n/sse                         the same as SSE `data:` lines
    /n8n/json                        one JSON object {"output": ...}
    /n8n/text                        plain text lines
    /slow/chat/completions           a token every 200 ms
    /hang/chat/completions           accepts, then never answers
    /fail/chat/completions           HTTP 500
    /cut/chat/completions            two tokens, then the connection is dropped
    /garbage/chat/completions        `data:` lines that are not JSON
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.helpers import free_port, wait_for

WORDS = ["Hello", " from", " the", " model", "."]


def chunk(content: str | None = None, role: str | None = None) -> str:
    delta: dict[str, str] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta}],
    }
    return f"data: {json.dumps(body)}\n\n"


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
        await self._record(request)

        async def gen() -> AsyncIterator[str]:
            yield chunk(role="assistant")
            yield chunk("")
            for word in WORDS:
                yield chunk(word)
            yield "data: [DONE]\n\n"

        return self._stream(request.url.path, gen(), "text/event-stream")

    async def openai_error(self, request: Request) -> Response:
        await self._record(request)

        async def gen() -> AsyncIterator[str]:
            yield chunk("Partial")
            yield 'data: {"error": {"message": "model overloaded"}}\n\n'

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
                Route("/openai-error/chat/completions", self.openai_error, methods=["POST"]),
                Route("/slow/chat/completions", self.slow, methods=["POST"]),
                Route("/hang/chat/completions", self.hang, methods=["POST"]),
                Route("/fail/chat/completions", self.fail, methods=["POST"]),
                Route("/cut/chat/completions", self.cut, methods=["POST"]),
                Route("/garbage/chat/completions", self.garbage, methods=["POST"]),
                Route("/n8n/stream", self.n8n_stream, methods=["POST"]),
                Route("/n8n/sse", self.n8n_sse, methods=["POST"]),
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
