"""Reply producers behind one interface: an async iterator of text chunks for a dialog.

``echo`` (the default) needs nothing and streams its answer word by word, so the whole
streaming path (``reply`` begin/item/end events, stop, journaling the complete reply)
is exercised without a model.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio

from .config import Settings
from .journal import Message

_WORDS = re.compile(r"\s*\S+\s*|\s+")


@dataclass(frozen=True)
class ReplyRequest:
    user: str
    dialog: str
    message: str
    history: Sequence[Message]  # the dialog so far, the new user message last


class ReplyError(Exception):
    """The producer failed; ``detail`` is a sentence a transcript reviewer understands."""

    def __init__(self, kind: str, detail: str, status: int = 502) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status


class Responder(Protocol):
    name: str
    # How many of the latest messages the producer wants as history (0: none, so the
    # journal is not read at all).
    history_messages: int

    def reply(self, request: ReplyRequest) -> AsyncIterator[str]: ...


def words(text: str) -> list[str]:
    """Split ``text`` into chunks that concatenate back to exactly ``text``."""
    return _WORDS.findall(text)


class Echo:
    """Answers ``Echo: <message>``, one word every ``delay`` seconds."""

    name = "echo"
    history_messages = 0

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def reply(self, request: ReplyRequest) -> AsyncIterator[str]:
        for chunk in words(f"Echo: {request.message}"):
            if self.delay:
                await anyio.sleep(self.delay)
            yield chunk


def make_responder(settings: Settings) -> Responder:
    return Echo(settings.echo_delay)
