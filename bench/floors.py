"""The floors the live benchmarks measure archiver against, each run under uvicorn.

``python -m bench.floors KIND --port N --data DIR``, with uvicorn's defaults (uvloop and
httptools when installed, as for ``archiver serve``) and no access log:

* ``sse``: a plain sse-starlette app. ``GET /subscribe`` sends ``retry``, a ``ready``
  event, then ``: ping`` comments every ``FLOOR_PING_INTERVAL`` seconds, and waits
  forever. sse-starlette's defaults otherwise, so SIGTERM cancels its streams as it does
  out of the box.
* ``asgi``: the same stream from a bare ASGI callable: one task per connection, the
  pings a timeout on ``receive()``. With ``?user=U``, a disconnect renames
  ``DIR/U/current.yaml`` into ``DIR/U/archived/`` on the event loop, the least an
  archive can cost.
* ``json``: a bare Starlette app whose ``POST /chat`` parses a JSON body and answers
  JSON, the floor for a chat round trip.

Every kind answers ``GET /health``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

PING = float(os.environ.get("FLOOR_PING_INTERVAL", "15"))
READY = b'event: ready\ndata: {"user":"floor","connection":"c-0","dialog":null,"messages":0}\n\n'
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


def sse_app() -> Any:
    import anyio
    from sse_starlette import EventSourceResponse, ServerSentEvent
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def subscribe(request: Request) -> Response:
        async def body() -> Any:
            yield ServerSentEvent(retry=3000, sep="\n")
            yield ServerSentEvent(
                event="ready",
                data='{"user":"floor","connection":"c-0","dialog":null,"messages":0}',
                sep="\n",
            )
            await anyio.sleep_forever()

        return EventSourceResponse(
            body(),
            ping=PING,
            sep="\n",
            ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/subscribe", subscribe), Route("/health", health)])


def asgi_app(data: Path) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": b"retry: 3000\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": READY, "more_body": True})
        while True:
            try:
                async with asyncio.timeout(PING):
                    message = await receive()
            except TimeoutError:
                await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
                continue
            if message["type"] == "http.disconnect":
                break
        user = parse_qs(scope["query_string"].decode()).get("user")
        if user:
            directory = data / user[0]
            os.rename(directory / "current.yaml", directory / "archived" / "floor.yaml")

    return app


def json_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def chat(request: Request) -> Response:
        body = await request.json()
        text = "Echo: " + body["message"]
        return JSONResponse({"dialog": "d-floor", "seq": 1, "reply": {"seq": 2, "text": text}})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/chat", chat, methods=["POST"]), Route("/health", health)])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["sse", "asgi", "json"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    app = {"sse": sse_app, "json": json_app}.get(args.kind)
    target = app() if app is not None else asgi_app(args.data)
    config = uvicorn.Config(
        target, host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
    print(json.dumps({"floor": args.kind, "port": args.port}), flush=True)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
