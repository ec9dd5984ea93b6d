"""dialogfile's one-pass reader against the generic one: the same Dialog, the same offsets;
and the optional entry fields (upstream, first_token_ms) written and read back."""

from __future__ import annotations

import os

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver.dialogfile import (
    Dialog,
    Message,
    _parse_with_ruamel,
    archive_bytes,
    entry_offsets,
    message_text,
    parse_dialog,
    parse_entry,
    read_with_offsets,
    tail_messages,
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
    upstream=st.none() | st.sampled_from(["echo", "openai", "n8n", "no"]),
    first_token_ms=st.none() | st.integers(0, 10**7),
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
    (b"\n  first_token_ms: ", b"\n  first_token_ms: -"),
    (b"\n  first_token_ms: ", b"\n  first_token_ms: x"),
    (b"\n  upstream: ", b"\n  note: 1\n  upstream: "),
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


OLD_ENTRY = "- seq: 2\n  role: assistant\n  at: '2026-11-21T10:30:05.420Z'\n  text: hi\n"
AT = "2026-11-21T10:30:05.420Z"


def test_an_entry_without_the_optional_fields_keeps_its_old_bytes() -> None:
    old = Message(2, "assistant", AT, "hi")
    assert message_text(old) == OLD_ENTRY
    assert parse_entry(OLD_ENTRY.encode()) == old
    assert old.upstream is None and old.first_token_ms is None
    assert "upstream" not in old.as_json() and "first_token_ms" not in old.as_json()


def test_upstream_and_first_token_ms_are_written_last_and_read_back() -> None:
    reply = Message(2, "assistant", AT, "hi", True, None, "openai", 0)
    failed = Message(3, "error", AT, "The model did not answer in time.", upstream="n8n")
    text = message_text(reply)
    assert text == OLD_ENTRY + "  interrupted: true\n  upstream: openai\n  first_token_ms: 0\n"
    assert message_text(failed).endswith("  upstream: n8n\n")
    for message in (reply, failed):
        assert parse_entry(message_text(message).encode()) == message
    assert reply.as_json() == {
        "seq": 2,
        "role": "assistant",
        "at": AT,
        "text": "hi",
        "interrupted": True,
        "upstream": "openai",
        "first_token_ms": 0,
    }


def test_every_reader_takes_the_fields_whole_file_tail_and_other_yaml_loaders() -> None:
    messages = [
        Message(1, "user", AT, "no", key="k-1"),
        Message(2, "assistant", AT, "yes", upstream="echo", first_token_ms=412),
        Message(3, "user", AT, "again"),
        Message(4, "error", AT, "down", upstream="no"),  # a name YAML 1.1 reads as false
    ]
    wanted = Dialog("a1", "d-1", AT, messages, AT, "user")
    data = archive_bytes(wanted)
    assert parse_dialog(data) == wanted and read_with_offsets(data)[0] == wanted
    assert _parse_with_ruamel(data.decode()) == wanted
    loaded = yaml.safe_load(data)["messages"]
    assert loaded[1]["upstream"] == "echo" and loaded[1]["first_token_ms"] == 412
    assert loaded[3]["upstream"] == "no"
    fd = os.memfd_create("dialog")
    try:
        os.write(fd, data)
        assert tail_messages(fd, len(data), 3) == messages[1:]
    finally:
        os.close(fd)
