"""Disk trouble is logged once per incident, and its end once."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from archiver.errors import JournalError
from archiver.incidents import Incidents


def events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    return [(r.getMessage(), getattr(r, "archiver_fields", {})) for r in caplog.records]


def test_shared_and_per_user_incidents(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="archiver")
    incidents = Incidents()
    for user in ("a", "a", "b", "c"):
        incidents.failed(user, "append", JournalError("no_space", "full"))
    incidents.failed("b", "archive", JournalError("permission", "denied"))
    incidents.failed("b", "append", JournalError("permission", "denied"))
    errors = [f for name, f in events(caplog) if name == "journal.error"]
    assert [(f["kind"], f["user"]) for f in errors] == [("no_space", "a"), ("permission", "b")]

    caplog.clear()
    incidents.succeeded("c")  # any write ends the disk-wide incident, not b's own
    assert events(caplog) == [
        ("journal.recovered", {"kind": "no_space", "user": None, "failures": 4, "seconds": 0.0})
    ]
    caplog.clear()
    incidents.succeeded("a")
    assert events(caplog) == []
    incidents.succeeded("b")
    [(name, fields)] = events(caplog)
    assert name == "journal.recovered" and fields["user"] == "b" and fields["failures"] == 2
    caplog.clear()
    incidents.failed(None, "fsync", JournalError("io", "EIO"))  # a new incident: logged
    assert [name for name, _ in events(caplog)] == ["journal.error"]
