"""The building blocks of the OpenAPI description (archiver/openapi.py): the component
schemas, the shared answers (auth, errors), and the builders of one operation.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]
JSON = "application/json"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: list[str], optional: dict[str, Schema] | None = None, **props: Schema) -> Schema:
    """An object schema: ``props`` (``required`` of them must be present) and ``optional``."""
    schema: Schema = {"type": "object", "properties": {**props, **(optional or {})}}
    if required:  # OpenAPI 3.0 wants a non-empty list or none
        schema["required"] = required
    return schema


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "description": "UTC, ISO 8601 with milliseconds and Z."}
NULL_STR: Schema = {"type": "string", "nullable": True}
REASON: Schema = {
    "type": "string",
    "enum": ["disconnect", "timeout", "shutdown", "recovery", "user"],
}
ROLE: Schema = {"type": "string", "enum": ["user", "assistant", "error"]}
INTERRUPTED: Schema = {
    "type": "boolean",
    "enum": [True],
    "description": "Present (true) only on a reply that was stopped or cut short.",
}

SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        ["error", "detail"],
        error={"type": "string", "description": "A stable code (see each response)."},
        detail={"type": "string", "description": "A sentence for people."},
    ),
    "ChatRequest": obj(
        ["message"],
        message={
            "type": "string",
            "minLength": 1,
            "description": "Not blank; at most ARCHIVER_MAX_MESSAGE_BYTES UTF-8 bytes.",
        },
    ),
    "ChatReply": obj(["seq", "text"], {"interrupted": INTERRUPTED}, seq=INT, text=STR),
    "ChatResult": obj(
        ["dialog", "seq", "reply"],
        {
            "archive": {
                "type": "string",
                "description": "A repeat of a key whose dialog has ended: the archive it is in.",
            }
        },
        dialog=STR,
        seq={"type": "integer", "description": "The question's seq."},
        reply=ref("ChatReply"),
    ),
    "Ticket": obj(
        ["ticket", "expires_in"],
        ticket={"type": "string", "description": "For GET /subscribe?ticket=; used once."},
        expires_in={"type": "number", "description": "Seconds it stays good (30)."},
    ),
    "GuestSession": obj(
        ["token", "user", "expires_in"],
        token={"type": "string", "description": "A JWT for the guest (claim guest: true)."},
        user={"type": "string", "description": "guest-<16 hex digits>"},
        expires_in={"type": "integer", "description": "Seconds (ARCHIVER_GUEST_TTL)."},
    ),
    "ReplacedEvent": obj(
        ["detail"],
        detail={
            "type": "string",
            "description": "Past ARCHIVER_MAX_STREAMS_PER_USER the oldest stream is ended with "
            "this; the client must not reconnect by itself.",
        },
    ),
    "Stopped": obj(
        ["stopped"],
        stopped={"type": "boolean", "description": "Whether a reply was being written."},
    ),
    "Message": obj(
        ["seq", "role", "at", "text"],
        {
            "interrupted": INTERRUPTED,
            "key": {"type": "string", "description": "A user message's Idempotency-Key."},
            "upstream": {
                "type": "string",
                "description": "An assistant or error message: the ARCHIVER_UPSTREAM that "
                "answered (echo, openai, n8n). Absent in messages written before it was kept.",
            },
            "first_token_ms": {
                "type": "integer",
                "minimum": 0,
                "description": "An assistant message: ms from the question being journaled "
                "to the first streamed chunk. Absent if none came, or in older messages.",
            },
        },
        seq=INT,
        role=ROLE,
        at=TIME,
        text=STR,
    ),
    "Dialog": obj(
        ["user", "dialog", "started", "messages"],
        {"ended": TIME, "reason": REASON},
        user=STR,
        dialog=STR,
        started=TIME,
        messages={"type": "array", "items": ref("Message")},
    ),
    "CurrentDialog": {
        "description": 'The current dialog, or {"dialog": null, "started": null, '
        '"messages": []} when there is none.',
        "oneOf": [
            ref("Dialog"),
            obj(
                ["dialog", "started", "messages"],
                dialog={"type": "string", "nullable": True, "enum": [None]},
                started={"type": "string", "nullable": True, "enum": [None]},
                messages={"type": "array", "maxItems": 0, "items": ref("Message")},
            ),
        ],
    },
    "ArchiveResult": obj(
        ["dialog", "archive", "messages"],
        dialog=NULL_STR,
        archive={"type": "string", "nullable": True, "description": "The archive's name."},
        messages={"type": "integer", "description": "0 when there was nothing to archive."},
    ),
    "SearchHit": obj(
        ["user", "archive", "dialog", "seq", "role", "at", "snippet"],
        user=STR,
        archive={"type": "string", "description": "The archive's file name."},
        dialog=STR,
        seq=INT,
        role=ROLE,
        at=TIME,
        snippet={
            "type": "array",
            "items": STR,
            "description": "Text around the hit; the matched words are at the odd indices.",
        },
    ),
    "SearchPage": obj(
        ["hits", "next"],
        hits={"type": "array", "items": ref("SearchHit")},
        next={"type": "string", "nullable": True, "description": "The cursor of the next page."},
    ),
    "Stats": {
        **obj(
            ["archives", "messages", "reply_ms", "first_token_ms", "problems_by_upstream"],
            archives=INT,
            messages=INT,
            users=INT,
            by_reason={"type": "object", "additionalProperties": INT},
            reply_ms=ref("Distribution"),
            first_token_ms=ref("Distribution"),
            interrupted=INT,
            errors=INT,
            problems_by_upstream={
                "type": "array",
                "description": "Replies, interrupted and error replies per upstream "
                "(`unknown`: archives written before the entries named it).",
                "items": obj(
                    ["upstream", "replies", "interrupted", "errors"],
                    upstream=STR,
                    replies=INT,
                    interrupted=INT,
                    errors=INT,
                ),
            },
        ),
        "description": "Archives by reason and by day, users, dialog lengths, reply and "
        "first-token times, problems per day and per upstream (the same figures as "
        "`archiver stats --json`; docs/search.md gives every field).",
        "additionalProperties": True,
    },
    "Distribution": obj(
        ["count", "p50", "p95", "histogram"],
        count=INT,
        p50={"type": "integer", "nullable": True, "description": "ms; null with no sample."},
        p95={"type": "integer", "nullable": True},
        histogram={
            "type": "array",
            "items": obj(
                ["le", "count"],
                le={"type": "integer", "nullable": True, "description": "null: the rest."},
                count=INT,
            ),
        },
    ),
    "ArchiveInfo": obj(
        ["name", "dialog", "started", "ended", "reason", "messages"],
        name={"type": "string", "description": "The file name, e.g. 2026-11-21-10-30-00.yaml"},
        dialog=STR,
        started=TIME,
        ended=TIME,
        reason=REASON,
        messages={"type": "integer", "description": "How many messages."},
    ),
    "UserSummary": obj(
        ["user", "archives", "current"],
        user=STR,
        archives=INT,
        current={"type": "boolean", "description": "Whether a current dialog exists."},
    ),
    "Health": obj(
        ["status", "uptime", "connections", "users", "replies", "archived", "instance"],
        {
            "tasks": {"type": "integer", "description": "Admin token only: asyncio tasks."},
            "threads": {"type": "integer", "description": "Admin token only: threads."},
            "broker": {
                "type": "object",
                "description": "ARCHIVER_BROKER: name (memory, redis) and state (ok, lost); "
                "with Redis also the live instances and the events received from them.",
                "properties": {
                    "name": {"type": "string", "enum": ["memory", "redis"]},
                    "state": {"type": "string", "enum": ["ok", "lost"]},
                    "instances": {"type": "integer"},
                    "received": {"type": "integer"},
                },
            },
        },
        status={"type": "string", "enum": ["ok", "draining"]},
        uptime={"type": "number"},
        connections=INT,
        users=INT,
        replies={"type": "integer", "description": "Replies being written now."},
        archived={
            "type": "object",
            "additionalProperties": INT,
            "description": "Archives by reason since start.",
        },
        instance=NULL_STR,
    ),
    # SSE payloads (the `data:` of each event; see x-sse-events on the streams).
    "ReadyEvent": obj(
        ["user", "connection", "dialog", "messages"],
        user=STR,
        connection=STR,
        dialog=NULL_STR,
        messages={"type": "integer", "description": "The current dialog's message count."},
    ),
    "MessageEvent": {
        "description": "A journaled message; the event's id is <dialog>:<seq>.",
        "allOf": [obj(["dialog"], dialog=STR), ref("Message")],
    },
    "ReplyEvent": obj(
        ["type", "message_id", "content"],
        {"interrupted": INTERRUPTED},
        type={"type": "string", "enum": ["begin", "item", "end", "error"]},
        message_id={"type": "string", "description": "The id of the message that follows end."},
        content={"type": "string", "description": "item: a chunk; error: the sentence."},
    ),
    "ArchivedEvent": obj(["dialog", "archive", "reason"], dialog=STR, archive=STR, reason=REASON),
    "ShutdownEvent": obj(["reason"], reason=STR),
    "FeedReadyEvent": obj(
        ["connection", "user", "watching"],
        connection=STR,
        user={"type": "string", "nullable": True, "description": "The ?user= filter."},
        watching=BOOL,
    ),
    "FeedArchiveEvent": {"allOf": [obj(["user"], user=STR), ref("ArchiveInfo")]},
}

SECURITY_SCHEMES: dict[str, Schema] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "HS256 with ARCHIVER_JWT_SECRET, or RS256/ES256 with "
        'ARCHIVER_JWT_PUBLIC_KEY; "sub" and "exp" required; "role": "admin" for admin routes.',
    },
    "cookie": {"type": "apiKey", "in": "cookie", "name": "archiver_token"},
    "query": {
        "type": "apiKey",
        "in": "query",
        "name": "access_token",
        "description": "For EventSource, which cannot send headers.",
    },
}
ANY_TOKEN: list[dict[str, list[str]]] = [{"bearer": []}, {"cookie": []}, {"query": []}]


def error(description: str, *codes: str, retry_after: bool = False) -> Schema:
    """An error response: the JSON error body, its codes listed."""
    body = {"allOf": [ref("Error")]}
    if codes:
        body["allOf"].append(obj([], error={"type": "string", "enum": list(codes)}))
    response: Schema = {"description": description, "content": {JSON: {"schema": body}}}
    if retry_after:
        seconds = {"description": "Seconds to wait.", "schema": INT}
        response["headers"] = {"Retry-After": seconds}
    return response


AUTH_CODES = (
    "missing_token",
    "expired_token",
    "bad_signature",
    "bad_algorithm",
    "malformed_token",
    "missing_claim",
    "token_not_yet_valid",
    "wrong_issuer",
    "bad_user_id",
    "token_too_large",
)
UNAUTHORIZED = error("No usable token.", *AUTH_CODES)
FORBIDDEN = error("An admin route without the admin role.", "forbidden")
NOT_FOUND = error("No such archive of this user.", "not_found")
STORAGE = error(
    "Draining, or the data directory cannot be written.",
    "shutting_down",
    "read_only",
    "permission",
    "io",
)


def ok(description: str, schema: Schema | None = None, media: str = JSON) -> Schema:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {media: {"schema": schema}}}


def stream(description: str, events: dict[str, str]) -> Schema:
    """An SSE response; ``events`` maps each event name to its payload schema."""
    response = ok(description, {"type": "string"}, "text/event-stream")
    response["x-sse-events"] = {name: ref(schema) for name, schema in events.items()}
    return response


def query(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": STR,
        "description": description,
    }


def path(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": STR, "description": description}


def operation(
    summary: str,
    responses: dict[int, Schema],
    *,
    auth: str = "user",  # user | admin | none
    tag: str = "chat",  # the chat and the current dialog
    params: list[Schema] | None = None,
    body: str | None = None,
    description: str | None = None,
) -> Schema:
    """One operation; the answers every route of its ``auth`` gives are added here."""
    op: Schema = {"summary": summary, "operationId": "", "tags": [tag]}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body:
        schema = ref(body)
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": schema}}}
    answers = dict(responses)
    if auth == "none":
        op["security"] = []
    else:
        op["security"] = ANY_TOKEN
        answers[401] = UNAUTHORIZED
    if auth == "admin":
        answers[403] = FORBIDDEN
    op["responses"] = {str(status): answers[status] for status in sorted(answers)}
    return op


def page(name: str) -> Schema:
    html = ok(f"The {name}.", {"type": "string"}, "text/html")
    return operation(f"The {name} (HTML)", {200: html}, auth="none", tag="pages")


SUBSCRIBE_EVENTS = {
    "ready": "ReadyEvent",
    "message": "MessageEvent",
    "reply": "ReplyEvent",
    "archived": "ArchivedEvent",
    "shutdown": "ShutdownEvent",
    "replaced": "ReplacedEvent",
}
ARCHIVE_BODY = {
    "description": "The archive: the file's exact bytes, or JSON with Accept: application/json.",
    "content": {"application/yaml": {"schema": STR}, JSON: {"schema": ref("Dialog")}},
}
FORMAT = query(
    "format", "md or html: a transcript a person can read or print, instead of the YAML file."
)
BAD_FORMAT = error("A format other than md or html.", "bad_format")
ARCHIVE_LIST = ok("Newest first.", {"type": "array", "items": ref("ArchiveInfo")})
ARCHIVE_NAME = path("name", "An archive's file name, as listed.")
USER = path("user", "The user id, percent-encoded (auth0%7C42).")
