"""Idempotency keys: the header's forms, the key in the journal, repeats found under the lock."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from archiver.dialogfile import Message, message_text, parse_dialog, parse_entry
from archiver.idempotency import RECENT_ARCHIVES, BadKey, Repeated, parse_key
from archiver.journal import Journal


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("abc", "abc"),
        ("  4b1d-9f  ", "4b1d-9f"),
        ('"quoted key"', "quoted key"),
        (r'"with \"escapes\" and \\"', 'with "escapes" and \\'),
        ("k" * 255, "k" * 255),
    ],
)
def test_the_bare_and_the_sf_string_forms_are_accepted(header: str, key: str) -> None:
    assert parse_key(header) == key


@pytest.mark.parametrize("header", ["", '""', "k" * 256, "a b", "é", '"open', '"bad \\x"', "\x00"])
def test_a_bad_key_is_refused_with_a_sentence(header: str) -> None:
    with pytest.raises(BadKey) as refused:
        parse_key(header)
    assert refused.value.detail.endswith(".")


@pytest.mark.parametrize(
    "key", ["550e8400-e29b-41d4-a716-446655440000", "yes", "0o17", "a: b", "#x", "'q'"]
)
def test_the_key_is_a_field_every_loader_reads_back(key: str) -> None:
    entry = message_text(
        Message(seq=1, role="user", at="2026-01-01T00:00:00.000Z", text="hi", key=key)
    )
    assert parse_entry(entry.encode()).key == key
    doc = "messages:\n" + entry
    assert yaml.safe_load(doc)["messages"][0]["key"] == key
    assert YAML(typ="safe", pure=True).load(doc)["messages"][0]["key"] == key


def test_a_repeat_is_found_in_the_journal_and_nothing_is_written(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append("a", "user", "hello", key="k1")
    journal.append("a", "assistant", "hi there")
    path = journal.layout.current_path("a")
    before = path.read_bytes()
    with pytest.raises(Repeated) as repeat:
        journal.append("a", "user", "hello", key="k1")
    found = repeat.value.found
    assert (found.asked.seq, found.asked.text, found.archive) == (1, "hello", None)
    assert found.answer is not None and found.answer.text == "hi there"
    assert path.read_bytes() == before
    assert [m.key for m in parse_dialog(before).messages] == ["k1", None]


def test_a_fresh_process_reads_the_keys_from_the_journal(tmp_path: Path) -> None:
    Journal(tmp_path).append("a", "user", "one", key="k1")
    other = Journal(tmp_path)  # another process, or this one after a restart
    other.append("a", "user", "two", key="k2")
    with pytest.raises(Repeated):
        other.append("a", "user", "one", key="k1")
    # And what the first process appends after the second read the file is seen too.
    Journal(tmp_path).append("a", "user", "three", key="k3")
    with pytest.raises(Repeated) as repeat:
        other.append("a", "user", "three", key="k3")
    assert repeat.value.found.asked.seq == 3


def test_a_repeat_after_the_archive_is_found_in_the_recent_archives(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append("a", "user", "old", key="old")
    journal.append("a", "assistant", "answer")
    archived = journal.archive("a", "user")
    assert archived is not None
    with pytest.raises(Repeated) as repeat:
        Journal(tmp_path).append("a", "user", "old", key="old")
    found = repeat.value.found
    assert found.archive == archived.name and found.answer is not None
    assert not journal.layout.current_path("a").exists(), "nothing journaled"


def test_only_the_newest_archives_are_searched(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append("a", "user", "first", key="first")
    journal.archive("a", "user")
    for i in range(RECENT_ARCHIVES):
        journal.append("a", "user", f"m{i}", key=f"m{i}")
        journal.archive("a", "user")
    appended = journal.append("a", "user", "first", key="first")
    assert appended.message.seq == 1 and appended.message.key == "first"
