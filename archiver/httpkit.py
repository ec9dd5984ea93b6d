"""What every route shares: the JSON error and its status, the user of a request, the body
of a chat, the admission of a client.

Errors are JSON ``{"error": code, "detail": sentence}``, raised as :class:`ApiError` and
logged once, as one ``request.rejected`` (or ``auth.rejected``) line, by one handler; the
HTTP status of every error code is decided here (``ERROR_STATUS``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

from .admission import Admission
from .auth import Anonymous, User
from .config import Settings
from .errors import JournalError
from .logs import log
from .sessions import Sessions

BODY_ENVELOPE = 4096  # bytes of JSON around the message that a body may add
# The HTTP status of each error a chat or a read can meet, by its code: decided here only
# (JournalError.kind, Refused.code, and ReplyError.kind as upstream_<kind>).
ERROR_STATUS = {
    "no_space": 507,
    "read_only": 503,
    "permission": 503,
    "io": 503,
    "corrupt": 500,
    "rate_limited": 429,
    "upstream_unavailable": 503,
    "upstream_timeout": 504,
}
UPSTREAM_STATUS = 502  # every other upstream failure: a bad gateway
ADMISSION_CODES = frozenset({"too_many_connections", "too_many_streams", "rate_limited_address"})


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


# ---------------------------------------------------------------------------------------
# Helpers


def sessions_of(request: HTTPConnection) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def require_user(request: HTTPConnection, admin: bool = False) -> User:
    user = request.user
    if isinstance(user, Anonymous):
        raise ApiError(401, user.reason, user.detail)
    assert isinstance(user, User)
    if admin and not user.admin:
        raise ApiError(403, "forbidden", "This route needs a token with the admin role.")
    return user


async def read_message(request: HTTPConnection, receive: Receive, limit: int) -> str:
    """The ``message`` of a JSON body, refusing an oversize body while reading it."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    body_limit = limit + BODY_ENVELOPE

    def too_large() -> ApiError:
        return ApiError(413, "too_large", f"The message is larger than the limit of {limit} bytes.")

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise too_large()
    body = bytearray()
    settings: Settings = request.app.state.settings
    # A client sending one byte a second holds a task and a descriptor: cut it. asyncio's
    # timeout, not anyio's move_on_after: its cancel scope asks sniffio which library
    # runs, ~1% of a chat (the server runs on asyncio's loop, uvloop).
    try:
        async with asyncio.timeout(settings.body_timeout):
            async for chunk in _body(receive):
                body += chunk
                if len(body) > body_limit:
                    raise too_large()
    except TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"The request body did not arrive within {settings.body_timeout:g} seconds.",
        ) from None
    try:
        data = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "bad_json", "The body is not valid UTF-8 JSON.") from None
    if not isinstance(data, dict) or "message" not in data:
        raise ApiError(400, "bad_request", 'The body must be a JSON object {"message": "..."}.')
    message = data["message"]
    if not isinstance(message, str):
        raise ApiError(400, "bad_request", "The message must be a string.")
    if not message.strip():
        raise ApiError(400, "empty_message", "The message is empty.")
    try:
        size = len(message.encode("utf-8"))
    except UnicodeEncodeError:
        raise ApiError(
            400, "bad_text", "The message contains invalid Unicode (a lone surrogate)."
        ) from None
    if size > limit:
        raise too_large()
    return message


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """The body's chunks, as ``Request.stream()`` reads them (``ClientDisconnect`` included)."""
    while True:
        message = await receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                return
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


# What a client is told; the journal's own, technical detail goes to the log (journal.error).
JOURNAL_DETAIL = {
    "no_space": "The server's disk is full; nothing was written. Try again later.",
    "read_only": "The server's storage is read-only right now; nothing was written.",
    "permission": "The server may not write this conversation's files; nothing was written.",
    "io": "The server's storage failed; nothing was written. Try again later.",
    "corrupt": "This conversation's file on the server is damaged; it was logged.",
}


def journal_api_error(exc: JournalError) -> ApiError:
    detail = JOURNAL_DETAIL.get(exc.kind, JOURNAL_DETAIL["io"])
    return ApiError(ERROR_STATUS.get(exc.kind, 503), exc.kind, detail)


# ---------------------------------------------------------------------------------------
# Endpoints


def client_of(request: HTTPConnection) -> str | None:
    """The client's address: behind a trusted proxy, the forwarded one (uvicorn sets it)."""
    return request.client.host if request.client else None


def admission_of(request: HTTPConnection) -> Admission:
    admission: Admission = request.app.state.admission
    return admission


def admit(request: HTTPConnection, stream: bool) -> None:
    """Refuse, before it costs anything, a request over an address's or the process's limits."""
    admission = admission_of(request)
    client = client_of(request)
    now = time.monotonic()
    refusal = admission.admit_stream(client, now) if stream else admission.admit_chat(client, now)
    if refusal is not None:
        raise ApiError(refusal.status, refusal.code, refusal.detail, refusal.headers)


# ---------------------------------------------------------------------------------------
# Error handling: one JSON shape, one log line per rejected request.


def _user_of(request: HTTPConnection) -> str | None:
    user = request.scope.get("user")
    return user.id if isinstance(user, User) else None


async def api_error(request: HTTPConnection, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    fields = {"status": exc.status, "method": request.scope["method"], "path": request.url.path}
    if exc.status == 401:
        log.info("auth.rejected", reason=exc.code, **fields)
    elif exc.code in ADMISSION_CODES:
        pass  # one limit.exceeded line per episode (admission.py), not one per request
    else:
        log.info("request.rejected", error=exc.code, user=_user_of(request), **fields)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else exc.headers
    return JSONResponse({"error": exc.code, "detail": exc.detail}, exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    detail = {
        404: "There is nothing at this address.",
        405: f"{request.method} is not allowed here.",
    }.get(exc.status_code, str(exc.detail))
    return await api_error(request, ApiError(exc.status_code, code, detail))


async def server_error(request: HTTPConnection, exc: Exception) -> Response:
    log.error(
        "request.failed",
        method=request.scope["method"],
        path=request.url.path,
        user=_user_of(request),
        error=type(exc).__name__,
    )
    return JSONResponse(
        {"error": "internal", "detail": "Something went wrong on our side; it was logged."}, 500
    )
