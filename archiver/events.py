"""The SSE events a subscriber is sent, each built in one place.

The shapes are the HTTP contract (the README's SSE events): ``message`` with its id
``<dialog>:<seq>``, ``reply`` while an answer streams, ``archived`` when a dialog ends,
``shutdown`` when the server goes away.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .dialogfile import Message
from .hub import Event

SHUTDOWN_EVENT = Event("shutdown", {"reason": "server shutting down"})
# The stream a newer one replaced (past ARCHIVER_MAX_STREAMS_PER_USER): the client must
# not reconnect by itself, or two tabs past the cap would replace each other for ever.
REPLACED_EVENT = Event(
    "replaced",
    {
        "detail": "This chat is open in too many tabs or windows; this one was closed. "
        "Reconnect here to use it."
    },
)


def message_event(dialog: str, message: Message) -> Event:
    data = {"dialog": dialog, **message.as_json()}
    return Event("message", data, id=f"{dialog}:{message.seq}")


def archived_event(dialog: str, archive: str, reason: str | None) -> Event:
    return Event("archived", {"dialog": dialog, "archive": archive, "reason": reason})


def reply_event(kind: str, message_id: str, content: str = "", interrupted: bool = False) -> Event:
    data: dict[str, Any] = {"type": kind, "message_id": message_id, "content": content}
    if interrupted:
        data["interrupted"] = True
    return Event("reply", data)


def ready_event(user: str, connection: str, dialog: str | None, messages: int) -> Event:
    data = {"user": user, "connection": connection, "dialog": dialog, "messages": messages}
    return Event("ready", data)


# -- the bytes on the wire ------------------------------------------------------------

# One encoder: json.dumps with options builds a new JSONEncoder on every call.
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what sse-starlette strips from ids and names
_RECENT = 64  # events remembered with their bytes: a burst, for all of a user's streams
_encoded: dict[int, tuple[Event, bytes]] = {}


def encode(event: Event) -> bytes:
    """The event as SSE bytes, exactly as sse-starlette's ``ServerSentEvent(data=json,
    event=, id=, sep="\n").encode()`` writes it, built once for every stream it goes to.

    The JSON is one line (it escapes every line break in a string), so it is one
    ``data:`` line; an id or name keeps sse-starlette's stripping of line breaks.
    ServerSentEvent cost ~6 us per event (a StringIO, two regex passes); a chat sends
    about ten events to each of the user's streams.
    """
    found = _encoded.get(id(event))
    if found is not None and found[0] is event:  # the id of a live object is its own
        return found[1]
    head = "" if event.id is None else f"id: {_LINE_BREAK.sub('', event.id)}\n"
    wire = f"{head}event: {_LINE_BREAK.sub('', event.name)}\ndata: {_to_json(event.data)}\n\n"
    data = wire.encode("utf-8")
    if len(_encoded) >= _RECENT:
        del _encoded[next(iter(_encoded))]  # the oldest
    _encoded[id(event)] = (event, data)
    return data
