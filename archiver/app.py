"""``create_app(settings)``: routes, middleware, and the one lifespan that owns every resource.

The stream and chat routes are in routes_live.py (served ahead of the middleware, by
direct.py); the routes that read archives are in routes_archives.py, and what every
route shares (``ApiError``, the status of each error code, the request's user, a chat's
body) in httpkit.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import auth, collector, guests, openapi, redact, routes_live
from .auth import User
from .broker import make_broker, preflight
from .config import Settings
from .direct import App, SecurityHeaders, Stack, direct_route
from .errors import JournalError
from .faults import Fault
from .feed import Feed
from .httpkit import (
    ApiError,
    api_error,
    client_of,
    http_error,
    journal_api_error,
    require_user,
    server_error,
    sessions_of,
)
from .hub import Event, Hub, Inbox
from .index import Index
from .indexer import Indexer
from .journal import Journal
from .limits import Breaker, RateLimit, ceil_seconds
from .logs import log
from .metrics import CONTENT_TYPE, Metrics
from .owners import Instance
from .replies import make_client, make_responder
from .routes_archives import (
    admin_stats,
    archive,
    archives,
    search,
    user_archives,
    users,
)
from .sessions import Sessions
from .stream import EventStream
from .threads import JournalThreads
from .tickets import Tickets


def widget_dir() -> Path:
    """The widget's static files: packaged in the wheel, or the checkout's ``widget/``."""
    packaged = Path(__file__).parent / "_widget"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "widget"


async def subscribe_ticket(request: Request) -> Response:
    """``POST /subscribe/ticket``: a single-use ticket for ``GET /subscribe?ticket=``, so the
    token itself never goes into a URL (nginx quotes request lines in its error log)."""
    if "access_token" in request.query_params:
        raise ApiError(
            400,
            "bad_request",
            "Send the token in the Authorization header (or the cookie), not in the URL.",
        )
    user = require_user(request)
    tickets: Tickets = request.app.state.tickets
    ticket = tickets.issue(user.id, time.time())
    return JSONResponse(
        {"ticket": ticket, "expires_in": tickets.seconds}, headers={"Cache-Control": "no-store"}
    )


async def session(request: Request) -> Response:
    """``POST /session``: a token for a new guest, or a fresh one for the guest calling."""
    settings: Settings = request.app.state.settings
    if not settings.guest_sessions:
        raise ApiError(
            404,
            "not_found",
            "Guest sessions are off on this server (ARCHIVER_GUEST_SESSIONS=true turns them on).",
        )
    user = request.user
    client = client_of(request)
    if isinstance(user, User):
        if not user.guest:
            raise ApiError(403, "forbidden", "Only a guest token can be refreshed here.")
        log.info("guest.refreshed", user=user.id, client=client)
        return _no_store(guests.mint(settings, user.id))
    if "authorization" in request.headers or auth.COOKIE in request.cookies:
        require_user(request)  # a token that does not verify: 401 with its reason
    limit: RateLimit = request.app.state.guest_rate
    wait = limit.take(client or "-", time.monotonic())
    if wait:
        raise ApiError(
            429,
            "too_many_guests",
            "Too many new guest sessions from this address; try again shortly.",
            {"Retry-After": str(ceil_seconds(wait))},
        )
    guest = guests.new_user()
    log.info("guest.created", user=guest, client=client)
    return _no_store(guests.mint(settings, guest))


def _no_store(body: dict[str, Any]) -> Response:
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def admin_feed(request: Request) -> Response | EventStream:
    """SSE: one ``archive`` event per archive as it lands (``?user=`` for one user)."""
    admin = require_user(request, admin=True)
    sessions = sessions_of(request)
    feed = sessions.feed
    if feed is None or sessions.draining:
        raise ApiError(503, "shutting_down", "The server is shutting down; reconnect shortly.")
    only = request.query_params.get("user") or None
    settings: Settings = request.app.state.settings

    def open_inbox() -> Inbox:
        inbox = feed.subscribe(only)
        log.info("feed.connect", user=admin.id, conn=inbox.id, only=only)
        return inbox

    async def events(inbox: Inbox) -> AsyncGenerator[list[Event], None]:
        watching = await feed.watching()
        yield [Event("ready", {"connection": inbox.id, "user": only, "watching": watching})]
        while (events := await inbox.take(ping=settings.ping_interval)) is not None:
            yield events

    def close_inbox(inbox: Inbox) -> None:
        feed.unsubscribe(inbox)
        log.info("feed.disconnect", user=admin.id, conn=inbox.id, reason=inbox.closed or "client")

    return EventStream(open_inbox, events, close_inbox, send_timeout=settings.send_timeout)


async def metrics(request: Request) -> Response:
    sessions = sessions_of(request)
    assert sessions.metrics is not None
    return Response(sessions.metrics.render(), media_type=CONTENT_TYPE)


async def chat_stop(request: Request) -> Response:
    user = require_user(request)
    stopped = sessions_of(request).stop(user.id)
    if stopped:
        log.info("reply.stop_requested", user=user.id)
    return JSONResponse({"stopped": stopped})


async def dialog(request: Request) -> Response:
    user = require_user(request)
    try:
        current = await sessions_of(request).threads.load_current(user.id)
    except JournalError as exc:
        raise journal_api_error(exc) from None
    if current is None:
        return JSONResponse({"dialog": None, "started": None, "messages": []})
    return JSONResponse(current.as_json())


async def dialog_archive(request: Request) -> Response:
    user = require_user(request)
    try:
        result = await sessions_of(request).archive(user.id, "user", raise_errors=True)
    except JournalError as exc:
        raise journal_api_error(exc) from None
    if result is None:
        return JSONResponse({"dialog": None, "archive": None, "messages": 0})
    return JSONResponse(
        {"dialog": result.dialog, "archive": result.name, "messages": result.messages}
    )


async def health(request: Request) -> Response:
    body = sessions_of(request).health()
    user = request.user
    if isinstance(user, User) and user.admin:
        # For leak hunting (the churn tests): what this process holds right now.
        body["tasks"] = len(asyncio.all_tasks())
        body["threads"] = threading.active_count()
    return JSONResponse(body)


def _page(name: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        path = widget_dir() / name
        if not path.is_file():
            raise ApiError(404, "not_found", f"The page {name} is not installed.")
        return FileResponse(path, media_type="text/html; charset=utf-8")

    return endpoint


# ---------------------------------------------------------------------------------------
# Lifespan and factory


# Divergence #7: uvicorn's Server is found through the SIGTERM handler it installed
# (handler.__self__.should_exit), as uvicorn owns the signals and exposes no hook.
def _exit_requested() -> bool:
    """Has uvicorn been told to exit? (sse-starlette's flag, or uvicorn's own.)"""
    if AppStatus.should_exit:
        return True
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


async def _watch_for_exit(sessions: Sessions) -> None:
    # Polling, because uvicorn owns the signal handlers; 0.1 s is uvicorn's own tick.
    while not _exit_requested():  # noqa: ASYNC110 (nothing to await: a flag set by a signal)
        await anyio.sleep(0.1)
    sessions.begin_shutdown()


def _armed_fault(spec: str) -> Fault:
    """Test-only: arm ARCHIVER_FAULT_POINT, and say so loudly."""
    fault = Fault.parse(spec)
    fault.announce = lambda point: log.warning("fault.crash", point=point, nth=fault.nth)
    log.warning("fault.armed", point=fault.point, nth=fault.nth, torn_bytes=fault.torn_bytes)
    return fault


def _indexer(settings: Settings) -> Indexer | None:
    """The search index's worker thread, started: its first job is the start-up
    catch-up (a full sync), in the background."""
    if not settings.search_index:
        return None
    indexer = Indexer(Index(settings.data_dir, settings.index_path))
    # Made before serving (a few ms, once), so its files exist from the first request.
    indexer.index.open()
    indexer.start()
    return indexer


def create_app(settings: Settings) -> Starlette:
    settings = auth.resolve_settings(settings)
    guests.check(settings)
    # Load redaction rules now, so a bad pattern stops the start with its message.
    redactor = redact.load(settings.redact, settings.redact_file)
    # An unreachable broker stops the start here, in one line (BrokerUnavailable).
    preflight(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Divergence #8: sse-starlette's process-global AppStatus is reset per app.
        AppStatus.should_exit = False  # process-global in sse-starlette; a new server starts
        instance = Instance(settings.data_dir)
        hub = Hub()
        broker = make_broker(settings, hub, instance)
        # Liveness is the broker's: the instance locks (memory) or the leases (Redis).
        journal = Journal(settings.data_dir, settings.fsync, instance.id, broker.alive)
        client = make_client(settings) if settings.upstream != "echo" else None
        journal.redactor = redactor
        if settings.fault_point:
            journal.fault = _armed_fault(settings.fault_point)
        indexer = _indexer(settings)
        sessions = Sessions(
            settings=settings,
            threads=JournalThreads(journal),
            hub=hub,
            responder=make_responder(settings, client),
            instance=instance,
            rate_limit=RateLimit(settings.rate_limit) if settings.rate_limit else None,
            breaker=None
            if settings.upstream == "echo"
            else Breaker(settings.breaker_failures, settings.breaker_cooldown),
            metrics=Metrics(lambda: hub.connections, lambda: len(hub.users()), collector.frozen),
            feed=Feed(journal),
            index=indexer,
            broker=broker,
        )
        app.state.sessions = sessions
        ticket_key = auth.load_or_create_ticket_key(settings.data_dir)
        app.state.tickets = Tickets(ticket_key, shared=broker.use_ticket if broker.shared else None)
        log.info(
            "server.start",
            max_connections=stack.admission.max_connections,
            pid=os.getpid(),
            instance=instance.id,
            data=settings.data_dir,
            fsync=settings.fsync,
            broker=broker.name,
            responder=sessions.responder.name,
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        try:
            async with anyio.create_task_group() as tg:
                await sessions.run(tg)
                tg.start_soon(_watch_for_exit, sessions)
                collector.start()
                tg.start_soon(collector.pace)
                yield
                await sessions.drain()
                tg.cancel_scope.cancel()
        finally:
            collector.stop()
            sessions.threads.close()
            if indexer is not None:
                indexer.stop()  # after the drain: the shutdown's archives are indexed too
            if client is not None:
                await client.aclose()
            await broker.close()
            instance.close()
            log.info("server.stop", pid=os.getpid(), instance=instance.id)

    # One of each (the token cache, the framing watch, CORS's options) for the middleware
    # and for the routes served ahead of it (direct.py).
    stack = Stack(settings)
    middleware = [] if stack.cors is None else [Middleware(CORSMiddleware, **stack.cors)]
    middleware += [
        Middleware(SecurityHeaders, security=stack.security),
        Middleware(AuthenticationMiddleware, backend=stack.backend),
    ]
    routes = [
        Route("/", _page("chat.html")),
        Route("/review", _page("review.html")),
        Mount("/widget", StaticFiles(directory=widget_dir(), check_dir=False), name="widget"),
        direct_route("/subscribe", routes_live.subscribe, ["GET"], stack),
        Route("/subscribe/ticket", subscribe_ticket, methods=["POST"]),
        Route("/session", session, methods=["POST"]),
        direct_route("/chat", routes_live.chat, ["POST"], stack),
        Route("/chat/stop", chat_stop, methods=["POST"]),
        Route("/dialog", dialog),
        Route("/dialog/archive", dialog_archive, methods=["POST"]),
        Route("/archives", archives),
        Route("/archives/{name}", archive),
        Route("/users", users),
        Route("/users/{rest:path}", user_archives),
        Route("/admin/feed", admin_feed),
        Route("/search", search),
        Route("/admin/stats", admin_stats),
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi.endpoint),
    ]
    app = App(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: server_error,
        },
    )
    app.state.settings = settings
    app.state.admission = stack.admission
    app.state.guest_rate = RateLimit(settings.guest_rate_per_ip)
    return app


def from_env() -> Starlette:
    """For ``uvicorn --factory archiver.app:from_env`` (and ``serve --reload``)."""
    from . import logs

    settings = Settings.from_env(os.environ)
    logs.setup(settings)
    return create_app(settings)
