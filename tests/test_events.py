"""events.encode: the bytes sse-starlette's ServerSentEvent writes, built once per event."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from sse_starlette import ServerSentEvent

from archiver.events import encode, message_event, reply_event
from archiver.hub import Event

_text = st.text(st.characters(codec="utf-8"), max_size=40)


def _sse_starlette(event: Event) -> bytes:
    data = json.dumps(event.data, ensure_ascii=False, separators=(",", ":"))
    return ServerSentEvent(data=data, event=event.name, id=event.id, sep="\n").encode()


@given(
    name=_text.filter(bool),
    id=st.none() | _text,
    data=st.dictionaries(_text, _text | st.integers() | st.none() | st.booleans(), max_size=4),
)
def test_the_same_bytes_as_sse_starlette(
    name: str, id: str | None, data: dict[str, object]
) -> None:
    event = Event(name, data, id=id)
    assert encode(event) == _sse_starlette(event)


def test_each_event_is_encoded_once_for_all_its_streams() -> None:
    event = reply_event("item", "d:2", "line one\nline two\r\n\u2028 é")
    first = encode(event)
    assert encode(event) is first  # the second stream gets the same bytes object
    assert first == _sse_starlette(event)
    equal = reply_event("item", "d:2", "line one\nline two\r\n\u2028 é")
    assert encode(equal) == first  # an equal event built anew: the same bytes


def test_many_events_keep_their_own_bytes() -> None:
    from archiver.dialogfile import Message

    events = [
        message_event("d", Message(seq=n, role="user", at="2026-12-02T05:00:00Z", text=f"m{n}"))
        for n in range(300)
    ]
    wires = [encode(e) for e in events]
    assert wires == [_sse_starlette(e) for e in events]
