from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from archiver import redact
from archiver.journal import Journal
from archiver.layout import ARCHIVED
from archiver.redact import RedactConfigError, luhn_ok

TEXT = (
    "Mail me at jane.doe+shop@example.co.uk or call +44 20 7946 0958. "
    "Card 4111 1111 1111 1111, expiry 12/27. Order #100234 shipped 2026-11-21, "
    "not a card: 4111 1111 1111 1112."
)


def test_builtin_patterns_on_a_known_text() -> None:
    redactor = redact.load(("email", "phone", "card"), None)
    assert redactor is not None
    text, found = redactor.redact(TEXT)
    assert text == (
        "Mail me at [redacted:email] or call [redacted:phone]. "
        "Card [redacted:card], expiry 12/27. Order #100234 shipped 2026-11-21, "
        "not a card: 4111 1111 1111 1112."
    )
    assert dict(found) == {"email": 1, "phone": 1, "card": 1}


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")


def test_extra_patterns_from_a_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text("# customer numbers\ncustomer: CUST-\\d{6}\nSECRET-[A-Z]+\n")
    redactor = redact.load((), rules)
    assert redactor is not None and redactor.names == ["customer", "custom"]
    text, _ = redactor.redact("CUST-123456 said SECRET-ABC")
    assert text == "[redacted:customer] said [redacted:custom]"


def test_bad_configuration_is_refused_with_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(RedactConfigError, match="unknown pattern 'ssn'"):
        redact.load(("ssn",), None)
    bad = tmp_path / "bad.txt"
    bad.write_text("broken: (unclosed\n")
    with pytest.raises(RedactConfigError, match=r"bad\.txt:1: not a valid regex"):
        redact.load((), bad)
    assert redact.load((), None) is None


def test_the_archive_is_redacted_and_the_journal_was_not(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync="no")
    journal.redactor = redact.load(("email", "card"), None)
    journal.append("u", "user", "my mail is a@b.example\nand card 4111-1111-1111-1111")
    before = journal.layout.current_path("u").read_text()
    assert "a@b.example" in before
    archived = journal.archive("u", "user")
    assert archived is not None
    doc = yaml.safe_load(archived.path.read_text())
    assert doc["messages"][0]["text"] == "my mail is [redacted:email]\nand card [redacted:card]"
    assert doc["redacted"] == "email=1, card=1" and doc["reason"] == "user"
    assert not journal.layout.current_path("u").exists()
    assert not list((journal.layout.dialogs_dir("u") / ARCHIVED).glob(".tmp-*"))


def test_a_crash_after_the_redacted_copy_landed_does_not_duplicate(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync="no")
    journal.redactor = redact.load(("email",), None)
    journal.append("u", "user", "x@y.example")
    path = journal.layout.current_path("u")
    saved = path.read_bytes()
    archived = journal.archive("u", "user")
    assert archived is not None
    # Put the journal back as the crash would have left it: trailer written, not unlinked.
    with_trailer = saved[:-4] + b"ended: '2026-11-21T10:00:00.000Z'\nreason: user\n...\n"
    path.write_bytes(with_trailer)
    assert journal.finish_crashed("u") is not None
    assert not path.exists()
    assert len(list((journal.layout.dialogs_dir("u") / ARCHIVED).glob("*.yaml"))) == 1
