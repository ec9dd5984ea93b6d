"""The HTTP API as an OpenAPI 3.0 description, for host sites that generate a client.

Served at ``GET /openapi.json`` and committed as ``docs/openapi.json``
(``python -m archiver.openapi > docs/openapi.json``; a test checks both are this).

Deliberate choices, so nobody "fixes" them:

* **Data built in Python, not a JSON file in the package.** Most of a route's entry is
  shared (the auth, the 401/403 answers, the error body), so :func:`operation` builds it
  from a few words and a new route is one entry in :data:`PATHS`; a JSON file would
  repeat those blocks in every route and drift. mypy checks the builders.
* **OpenAPI 3.0.3, not 3.1**: client generators (openapi-generator, openapi-typescript,
  NSwag) read 3.0 fully, 3.1 only in part; nothing here needs 3.1.
* **SSE**: OpenAPI before 3.2 cannot type the events of a ``text/event-stream``. Each
  stream's response names its events in ``x-sse-events`` (event name → payload schema),
  and the payloads are ordinary component schemas, so a generator still makes types.
* ``/users/{user}/archives[/{name}]`` are two paths here; the app routes both through
  one ``/users/{rest:path}`` route so an encoded ``/`` in an id stays one segment.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import __version__
from .openapi_schemas import (
    ARCHIVE_BODY,
    ARCHIVE_LIST,
    ARCHIVE_NAME,
    BAD_FORMAT,
    FORMAT,
    NOT_FOUND,
    SCHEMAS,
    SECURITY_SCHEMES,
    STORAGE,
    STR,
    SUBSCRIBE_EVENTS,
    USER,
    Schema,
    error,
    ok,
    operation,
    page,
    path,
    query,
    ref,
    stream,
)

# path -> method -> operation. A new route is one entry here (the tests check that every
# route of the app is described here and every path here is a route of the app).
PATHS: dict[str, dict[str, Schema]] = {
    "/subscribe": {
        "get": operation(
            "Subscribe to the user's events (SSE)",
            {
                200: stream(
                    "retry: 3000 first; a ': ping' comment every interval.", SUBSCRIBE_EVENTS
                ),
                401: error("A stream ticket that is bad, used or expired.", "bad_ticket"),
                429: error(
                    "Too many streams from this address, or new streams too fast.",
                    "too_many_streams",
                    "rate_limited_address",
                    retry_after=True,
                ),
                503: error(
                    "The server is draining, or holds as many streams as it can.",
                    "shutting_down",
                    "too_many_connections",
                    retry_after=True,
                ),
            },
            tag="stream",
            params=[
                query("ticket", "A stream ticket from POST /subscribe/ticket, instead of a token."),
                query("last_event_id", "For clients that cannot send Last-Event-ID."),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": STR,
                    "description": "Replay the messages of that dialog after that id.",
                },
            ],
        )
    },
    "/chat": {
        "post": operation(
            "Send a message; answers once the reply is journaled",
            {
                200: ok("The question's and the reply's seq, and the reply.", ref("ChatResult")),
                400: error(
                    "Not a valid body, or an Idempotency-Key that is not 1-255 visible ASCII.",
                    "bad_json",
                    "bad_request",
                    "empty_message",
                    "bad_text",
                    "bad_idempotency_key",
                ),
                408: error("The body did not arrive within ARCHIVER_BODY_TIMEOUT.", "body_timeout"),
                409: error(
                    "A reply for this user is still streaming; or this key's message was saved "
                    "but its reply was lost (it is not saved again).",
                    "reply_in_progress",
                    "idempotency_key_unanswered",
                ),
                413: error("Past the message limit.", "too_large"),
                415: error("The body is not application/json.", "unsupported_media_type"),
                422: error(
                    "This Idempotency-Key came with another message.", "idempotency_key_reused"
                ),
                429: error(
                    "Over ARCHIVER_RATE_LIMIT or the address's rate; nothing journaled.",
                    "rate_limited",
                    "rate_limited_address",
                    retry_after=True,
                ),
                500: error("This dialog's file is damaged.", "corrupt", "internal"),
                502: error(
                    "The model failed; the question and an error message are journaled.",
                    "upstream_connect",
                    "upstream_http_status",
                    "upstream_cut",
                    "upstream_garbage",
                    "upstream_reported",
                    "reply_failed",
                ),
                503: error(
                    "Breaker open (Retry-After), draining, or storage unwritable.",
                    "upstream_unavailable",
                    "shutting_down",
                    "read_only",
                    "permission",
                    "io",
                    retry_after=True,
                ),
                504: error("The model did not answer in time.", "upstream_timeout"),
                507: error("The disk is full; nothing written.", "no_space"),
            },
            body="ChatRequest",
            params=[
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": STR,
                    "description": "A repeat with the same key returns the first result and "
                    "journals nothing (IETF httpapi draft).",
                }
            ],
        )
    },
    "/subscribe/ticket": {
        "post": operation(
            "A single-use ticket for GET /subscribe?ticket= (the token stays out of URLs)",
            {
                200: ok("The ticket.", ref("Ticket")),
                400: error("The token came in the URL.", "bad_request"),
            },
            tag="stream",
        )
    },
    "/session": {
        "post": operation(
            "A guest session (ARCHIVER_GUEST_SESSIONS): a new guest, or a guest token refreshed",
            {
                200: ok("The guest's token.", ref("GuestSession")),
                403: error("A token that is not a guest's.", "forbidden"),
                404: error("Guest sessions are off.", "not_found"),
                429: error(
                    "Too many new guests from this address.", "too_many_guests", retry_after=True
                ),
            },
            auth="none",
            tag="chat",
        )
    },
    "/chat/stop": {
        "post": operation(
            "Stop the reply being written (the partial reply is journaled, interrupted)",
            {200: ok("Whether a reply was stopped.", ref("Stopped"))},
        )
    },
    "/dialog": {
        "get": operation(
            "The current dialog",
            {200: ok("The current dialog.", ref("CurrentDialog")), 503: STORAGE},
        )
    },
    "/dialog/archive": {
        "post": operation(
            "End the current dialog now (reason user)",
            {
                200: ok("What was archived.", ref("ArchiveResult")),
                503: STORAGE,
                507: error("The disk is full.", "no_space"),
            },
        )
    },
    "/archives": {"get": operation("The user's archives", {200: ARCHIVE_LIST}, tag="archives")},
    "/archives/{name}": {
        "get": operation(
            "One of the user's archives",
            {200: ARCHIVE_BODY, 400: BAD_FORMAT, 404: NOT_FOUND},
            tag="archives",
            params=[ARCHIVE_NAME, FORMAT],
        )
    },
    "/users": {
        "get": operation(
            "Every user with archives or a current dialog",
            {200: ok("Users.", {"type": "array", "items": ref("UserSummary")})},
            auth="admin",
            tag="admin",
        )
    },
    "/users/{user}/archives": {
        "get": operation(
            "Any user's archives", {200: ARCHIVE_LIST}, auth="admin", tag="admin", params=[USER]
        )
    },
    "/users/{user}/archives/{name}": {
        "get": operation(
            "One archive of any user",
            {200: ARCHIVE_BODY, 400: BAD_FORMAT, 404: NOT_FOUND},
            auth="admin",
            tag="admin",
            params=[USER, ARCHIVE_NAME, FORMAT],
        )
    },
    "/admin/feed": {
        "get": operation(
            "Archives as they land, also those other processes write (SSE)",
            {
                200: stream(
                    "One archive event per archive.",
                    {"ready": "FeedReadyEvent", "archive": "FeedArchiveEvent"},
                ),
                503: error("The server is draining.", "shutting_down"),
            },
            auth="admin",
            tag="admin",
            params=[query("user", "Only this user's archives.")],
        )
    },
    "/search": {
        "get": operation(
            "Full-text search of archives: the user's own; an admin's, everyone's (user: narrows)",
            {
                200: ok("Best match first.", ref("SearchPage")),
                400: error(
                    "A malformed query, limit or cursor.", "bad_query", "bad_limit", "bad_cursor"
                ),
                503: error("Search is off or unavailable.", "search_unavailable"),
            },
            tag="archives",
            params=[
                query("q", 'Words, "phrases", prefix*, and user: role: reason: since: until:.'),
                query("limit", "Hits per page, 1 to 500 (default 50)."),
                query("cursor", "The `next` of the previous page."),
            ],
        )
    },
    "/admin/stats": {
        "get": operation(
            "Counts by reason and day, dialog lengths, reply times",
            {
                200: ok("The figures.", ref("Stats")),
                400: error("A bad since or until.", "bad_time"),
                503: error("The index is unavailable.", "search_unavailable"),
            },
            auth="admin",
            tag="admin",
            params=[
                query("since", "Archives that ended at or after (a date or ISO time)."),
                query("until", "Archives that ended at or before."),
                query("user", "Only this user."),
            ],
        )
    },
    "/health": {
        "get": operation(
            "Health (an admin token adds tasks and threads)",
            {200: ok("Health.", ref("Health"))},
            auth="none",
            tag="operations",
        )
    },
    "/metrics": {
        "get": operation(
            "Prometheus metrics",
            {200: ok("Prometheus text format.", STR, "text/plain")},
            auth="none",
            tag="operations",
        )
    },
    "/openapi.json": {
        "get": operation(
            "This description",
            {200: ok("OpenAPI 3.0.", {"type": "object"})},
            auth="none",
            tag="operations",
        )
    },
    "/": {"get": page("demo chat page")},
    "/review": {"get": page("review page")},
    "/widget/{file}": {
        "get": operation(
            "The widget's static files (widget.js, embed.js, ...)",
            {200: ok("The file."), 404: error("No such file.", "not_found")},
            auth="none",
            tag="pages",
            params=[path("file", "A file name.")],
        )
    },
}


def _operation_id(method: str, route: str) -> str:
    """``get /users/{user}/archives`` → ``get_users_user_archives``: stable, unique."""
    words = [w.strip("{}").replace(".", "_") for w in route.split("/") if w] or ["root"]
    return "_".join([method, *words])


@cache
def document() -> dict[str, Any]:
    paths = {
        route: {m: {**op, "operationId": _operation_id(m, route)} for m, op in methods.items()}
        for route, methods in PATHS.items()
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "archiver",
            "version": __version__,
            "description": "Chat with a model over SSE; every dialog journaled as YAML and "
            "archived on disconnect, timeout and shutdown. Errors are JSON "
            '{"error": code, "detail": sentence}. SSE streams list their events in '
            "x-sse-events (event name: payload schema).",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }


def dumps() -> str:
    """The committed form (docs/openapi.json)."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


async def endpoint(request: Request) -> Response:
    return JSONResponse(document())


if __name__ == "__main__":
    print(dumps(), end="")
