"""dialogfile's one-pass reader against the generic one: the same Dialog, the same offsets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from archiver.dialogfile import (
    Dialog,
    Message,
    archive_bytes,
    entry_offsets,
    parse_dialog,
    read_with_offsets,
)
from tests.test_yamltext import TRICKY

text = st.sampled_from(TRICKY) | st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
message = st.builds(
    Message,
    seq=st.integers(0, 10**6),
    role=st.sampled_from(["user", "assistant", "error"]),
    at=st.sampled_from(["2026-11-21T10:30:05.420Z", "not a time"]),
    text=text,
    interrupted=st.booleans(),
    key=st.none() | st.sampled_from(["k1", "a key: with colon", "ключ"]),
)
dialog = st.builds(
    Dialog,
    user=st.sampled_from(["alice", "auth0|42", "Bob Smith", "no"]),
    dialog=st.just("d-20261121T103000Z-3f9a"),
    started=st.just("2026-11-21T10:30:00.123Z"),
    messages=st.lists(message, max_size=5),
    ended=st.just("2026-11-21T10:35:00.000Z"),
    reason=st.sampled_from(["disconnect", "user"]),
    extra=st.sampled_from([{}, {"redacted": "email=2, card=0"}]),
)
# Edits by hand that leave a file YAML (or not) but not in the journal's exact shape.
EDITS = [
    (b"", b""),
    (b"\n- seq: ", b"\n# a comment\n- seq: "),
    (b"\n  role: ", b"\n  extra: 1\n  role: "),
    (b"\n  text: ", b"\n  text2: x\n  text: "),
    (b"\nended: ", b"\n\nended: "),
    (b"\nended: ", b"\n- seq: 99\n  role: user\n  at: 'x'\n  text: late\nended: "),
    (b"\nmessages:\n", b"\nmessages:\n\n"),
    (b"\nreason: ", b"\nnote: here\nreason: "),
    (b"  interrupted: true\n", b"  interrupted: 'true'\n"),
    (b"\n  at: '", b"\n  at: '' '"),
    (b"\n...\n", b"\n"),
    (b"user: ", b"\xef\xbb\xbfuser: "),
    (b"\n  text: ", b"\n  text: \xff"),
]


def generic(data: bytes) -> tuple[object, object]:
    try:
        found = parse_dialog(data)
    except Exception as exc:  # the same failure, whichever reader
        return type(exc), None
    return found, entry_offsets(data, len(found.messages))


def one_pass(data: bytes) -> tuple[object, object]:
    try:
        return read_with_offsets(data)
    except Exception as exc:
        return type(exc), None


@settings(max_examples=300, deadline=None)
@given(dialog, st.sampled_from(EDITS), st.integers(0, 3))
def test_the_one_pass_reader_reads_what_parse_dialog_reads(
    wanted: Dialog, edit: tuple[bytes, bytes], nth: int
) -> None:
    data = archive_bytes(wanted)
    old, new = edit
    if old and data.count(old) > nth:
        at = -1
        for _ in range(nth + 1):
            at = data.find(old, at + 1)
        data = data[:at] + new + data[at + len(old) :]
    assert one_pass(data) == generic(data), data
    if not old:
        assert one_pass(data)[0] == wanted
