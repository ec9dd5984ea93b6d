"""The SSE events a subscriber is sent, each built in one place.

The shapes are the HTTP contract (the README's SSE events): ``message`` with its id
``<dialog>:<seq>``, ``reply`` while an answer streams, ``archived`` when a dialog ends,
``shutdown`` when the server goes away.
"""

from __future__ import annotations

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
