"""Routes served as plain ASGI in front of Starlette's stack: ``GET /subscribe`` and ``POST /chat``.

Starlette's request path (the suspended middleware and route coroutines, ``Request``,
its headers) held 6.4 KB of each idle subscription's 22 KB and ~8% of a chat's CPU. The
two hot routes skip it: :class:`App` hands a request for a :class:`Direct` route's path
to that route before Starlette's middleware stack sees it, and :class:`Direct` does what
the stack did for the route, with the same objects and in the same order:

1. the CORS middleware (``cors_options``, one set for both ways), when configured;
2. :class:`SecurityHeaders`' framing check and headers (one :class:`Security` for both);
3. the front door (:class:`~archiver.frontdoor.FrontDoor`): a request over its address's
   or the process's limits refused before its token is verified, and a stream's
   handshake waiting for its address's place;
4. authentication by the app's one ``JWTBackend`` (its cache of verified tokens is
   shared), setting ``scope["user"]`` as ``AuthenticationMiddleware`` does;
5. the method check (405), then the endpoint, its :class:`~archiver.httpkit.ApiError`
   answered by ``httpkit.api_error`` (the same JSON, status and log line), anything else
   by ``httpkit.server_error`` (500, outside the security headers, and re-raised), as
   Starlette's exception middlewares do.

The routes stay in the app's route table (``direct_route``), so the OpenAPI test and
anything that lists routes see them; Starlette itself never gets their requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import Admission
from .auth import JWTBackend
from .config import Settings
from .framing import FramingWatch
from .frontdoor import FrontDoor
from .httpkit import ApiError, api_error, server_error
from .stream import HEADERS as STREAM_HEADERS
from .stream import EventStream

Endpoint = Callable[[HTTPConnection, Receive], Awaitable[Response | EventStream]]


def cors_options(settings: Settings) -> dict[str, Any] | None:
    """``CORSMiddleware``'s options, or None without ``ARCHIVER_ALLOWED_ORIGINS``."""
    if not settings.allowed_origins:
        return None
    return {
        "allow_origins": list(settings.allowed_origins),
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"],
        "max_age": 600,
    }


class Security:
    """nosniff everywhere, and a CSP that lets only ``allowed_origins`` frame the widget."""

    def __init__(self, allowed_origins: tuple[str, ...]) -> None:
        self.framing = FramingWatch(allowed_origins)
        ancestors = " ".join(("'self'", *allowed_origins))
        self.headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (
                b"content-security-policy",
                (
                    "default-src 'self'; script-src 'self'; style-src 'self'; "
                    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                    f"form-action 'self'; frame-ancestors {ancestors}"
                ).encode(),
            ),
        ]
        # A stream's response headers with these after them, made once for every stream.
        self.stream_headers = STREAM_HEADERS + self.headers


class SecurityHeaders:
    """The middleware form of :class:`Security`, for every route Starlette serves."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.security.framing.check(scope)  # the browser will refuse the frame: say so in the log
        headers = self.security.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Direct:
    """One route as plain ASGI: what Starlette's stack did for it, without the stack."""

    __slots__ = ("_cors", "backend", "endpoint", "front", "methods", "security")

    def __init__(
        self,
        endpoint: Endpoint,
        methods: frozenset[str],
        stack: Stack,
    ) -> None:
        self.endpoint = endpoint
        self.methods = methods
        self.backend = stack.backend
        self.security = stack.security
        self.front = stack.front
        cors = stack.cors
        self._cors = None if cors is None else CORSMiddleware(self._serve, **cors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Two frames held for a stream's life (this one and the stream's), not Starlette's ten.
        if self._cors is not None:
            await self._cors(scope, receive, send)
            return
        response = await self._prepare(scope, receive, send)
        await response(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._prepare(scope, receive, send)
        await response(scope, receive, send)

    async def _prepare(self, scope: Scope, receive: Receive, send: Send) -> Response | EventStream:
        """The response to send, with the security headers (an error's too)."""
        self.security.framing.check(scope)
        conn = HTTPConnection(scope)
        try:
            refused = self.front.refuse(scope)
            if refused is not None:
                raise refused
            place = await self.front.enter(scope)
            try:
                scope["auth"], scope["user"] = await self.backend.authenticate(conn)
                method = scope["method"]
                if method not in self.methods:
                    raise ApiError(405, "method_not_allowed", f"{method} is not allowed here.")
                response = await self.endpoint(conn, receive)
            finally:
                self.front.leave(place)
        except ApiError as exc:
            response = await api_error(conn, exc)
        except Exception as exc:
            # As Starlette's ServerErrorMiddleware: a 500 without the security headers, and
            # the error raised on for the server's log.
            await (await server_error(conn, exc))(scope, receive, send)
            raise
        if isinstance(response, EventStream):
            response.headers = self.security.stream_headers
        else:
            response.raw_headers += self.security.headers
        return response


def direct_route(path: str, endpoint: Endpoint, methods: list[str], stack: Stack) -> Route:
    """A route of the app's table, served by :class:`Direct` with the methods Starlette
    gives it (with GET comes HEAD)."""
    direct = Direct(endpoint, frozenset(), stack)
    route = Route(path, direct, methods=methods)
    direct.methods = frozenset(route.methods or ())
    return route


class Stack:
    """What the middleware stack and the direct routes share: one of each."""

    def __init__(self, settings: Settings) -> None:
        self.backend = JWTBackend(settings)
        self.security = Security(settings.allowed_origins)
        self.cors = cors_options(settings)
        # The routes' own judgement (httpkit.admit) and the front door count in one.
        self.admission = Admission(
            settings.resolved_max_connections(),
            settings.max_streams_per_ip,
            settings.rate_limit_per_ip,
        )
        self.front = FrontDoor(self.admission, settings.handshakes_per_ip)


# Divergence #15: two routes served ahead of Starlette's middleware stack (ARCHITECTURE.md).
class App(Starlette):
    """Starlette, with its :class:`Direct` routes served ahead of its middleware stack."""

    _direct: dict[str, Direct] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            direct = self._direct
            if direct is None:
                direct = self._direct = {
                    r.path: r.app
                    for r in self.routes
                    if isinstance(r, Route) and isinstance(r.app, Direct)
                }
            route = direct.get(scope["path"])
            if route is not None:
                scope["app"] = self  # request.app, as Starlette sets it
                await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
