"""The two hot routes, ``GET /subscribe`` and ``POST /chat``, served by ``direct.Direct``.

Each takes the request's ``HTTPConnection`` (headers, query, user, client: no
``Request``) and the ASGI ``receive``, and returns what to send; their errors are
``ApiError``s like every route's.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

from .admission import Admission
from .auth import User
from .chats import Busy, Failed, KeyReused, Refused, ShuttingDown, Unanswered
from .config import Settings
from .errors import JournalError
from .httpkit import (
    ERROR_STATUS,
    UPSTREAM_STATUS,
    ApiError,
    admission_of,
    admit,
    client_of,
    journal_api_error,
    read_message,
    require_user,
    sessions_of,
)
from .hub import Event, Inbox
from .idempotency import BadKey, parse_key
from .limits import ceil_seconds
from .logs import log
from .replies import ReplyError
from .sessions import Sessions
from .stream import EventStream
from .tickets import BadTicket, Tickets


async def stream_user(conn: HTTPConnection) -> User:
    """The user of ``GET /subscribe``: by a stream ticket (the widget), else by the token."""
    ticket = conn.query_params.get("ticket")
    if ticket is None:
        return require_user(conn)
    tickets: Tickets = conn.app.state.tickets
    try:
        return User(id=await tickets.redeem_everywhere(ticket, time.time()))
    except BadTicket as exc:
        raise ApiError(401, "bad_ticket", exc.detail) from None


class Subscription:
    """One stream's open, events and close: one small object for the life of the stream
    (three closures and their cells cost more per idle subscription)."""

    __slots__ = ("admission", "client", "last_event_id", "ping", "sessions", "started", "user")

    def __init__(
        self,
        user: str,
        sessions: Sessions,
        admission: Admission,
        client: str | None,
        last_event_id: str | None,
        ping: float,
    ) -> None:
        self.user = user
        self.sessions = sessions
        self.admission = admission
        self.client = client
        self.last_event_id = last_event_id
        self.ping = ping
        self.started = time.monotonic()

    def open(self) -> Inbox:
        self.admission.opened(self.client)
        inbox = self.sessions.connect(self.user)
        log.info(
            "sse.connect",
            user=self.user,
            conn=inbox.id,
            last_event_id=self.last_event_id,
            client=self.client,
        )
        return inbox

    def events(self, inbox: Inbox) -> AsyncGenerator[list[Event], None]:
        return self.sessions.stream(inbox, self.last_event_id, ping=self.ping)

    def close(self, inbox: Inbox) -> None:
        self.admission.closed(self.client)
        remaining = self.sessions.disconnect(inbox)
        log.info(
            "sse.disconnect",
            user=self.user,
            conn=inbox.id,
            reason=inbox.closed or "client",
            seconds=round(time.monotonic() - self.started, 1),
            remaining=remaining,
        )


async def subscribe(conn: HTTPConnection, receive: Receive) -> EventStream:
    user = await stream_user(conn)
    sessions = sessions_of(conn)
    if sessions.draining:
        raise ApiError(503, "shutting_down", "The server is shutting down; reconnect shortly.")
    admit(conn, stream=True)
    last_event_id = conn.headers.get("last-event-id") or conn.query_params.get("last_event_id")
    settings: Settings = conn.app.state.settings
    sub = Subscription(
        user.id,
        sessions,
        admission_of(conn),
        client_of(conn),
        last_event_id,
        settings.ping_interval,
    )
    return EventStream(sub.open, sub.events, sub.close, send_timeout=settings.send_timeout)


def idempotency_key(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("idempotency-key")
    if header is None:
        return None
    try:
        return parse_key(header)
    except BadKey as exc:
        raise ApiError(400, "bad_idempotency_key", exc.detail) from None


async def chat(conn: HTTPConnection, receive: Receive) -> Response:
    user = require_user(conn)
    settings: Settings = conn.app.state.settings
    admit(conn, stream=False)
    key = idempotency_key(conn)
    text = await read_message(conn, receive, settings.max_message_bytes)
    try:
        result = await sessions_of(conn).chat(user.id, text, key)
    except KeyReused:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different message; "
            "use a new key for a new message.",
        ) from None
    except Unanswered as exc:
        where = f"archive {exc.found.archive}" if exc.found.archive else "this conversation"
        raise ApiError(
            409,
            "idempotency_key_unanswered",
            f"This message was saved already (in {where}), but its reply was lost when "
            "the server stopped; it will not be saved again.",
        ) from None
    except Failed as exc:
        raise ApiError(
            502, "reply_failed", f"The reply to this message failed: {exc.detail}"
        ) from None
    except Busy:
        raise ApiError(
            409, "reply_in_progress", "A reply is still being written; wait for it or stop it."
        ) from None
    except ShuttingDown:
        raise ApiError(
            503, "shutting_down", "The server is shutting down; try again.", {"Retry-After": "1"}
        ) from None
    except JournalError as exc:
        raise journal_api_error(exc) from None
    except Refused as exc:
        retry = {"Retry-After": str(ceil_seconds(exc.retry_after))}
        raise ApiError(ERROR_STATUS[exc.code], exc.code, exc.detail, retry) from None
    except ReplyError as exc:
        code = f"upstream_{exc.kind}"
        raise ApiError(ERROR_STATUS.get(code, UPSTREAM_STATUS), code, exc.detail) from None
    return JSONResponse(result.as_json())
