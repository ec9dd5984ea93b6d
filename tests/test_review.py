from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from archiver import archive_writes, archives, render, search
from archiver.archives import ArchiveInfo
from archiver.dialogfile import (
    Dialog,
    Message,
    header_text,
    message_text,
    parse_dialog,
    trailer_text,
)
from archiver.journal import Journal
from archiver.layout import user_dir_name

# ---------------------------------------------------------------------------------------
# A fixture data directory, shared with test_cli.py


def write_archive(
    data: Path,
    user: str,
    name: str,
    texts: list[tuple[str, str]] | list[tuple[str, str, dict[str, Any]]],
    *,
    ended: str,
    reason: str = "disconnect",
    dialog: str | None = None,
) -> Path:
    """An archive file exactly as the journal writes one, with the times given (a third
    item of a text: the entry's optional fields, e.g. upstream and first_token_ms)."""
    directory = data / "users" / user_dir_name(user) / "dialogs" / "archived"
    directory.mkdir(parents=True, exist_ok=True)
    started = ended[:11] + "00:00:00.000Z"
    parts = [header_text(user, dialog or f"d-{name[:-5]}", started)]
    for seq, (role, text, *more) in enumerate(texts, start=1):
        at = ended[:17] + f"{min(seq, 59):02d}.000Z"
        fields = more[0] if more else {}
        parts.append(message_text(Message(seq=seq, role=role, at=at, text=text, **fields)))
    parts.append(trailer_text(ended, reason) + "...\n")
    path = directory / name
    path.write_text("".join(parts), encoding="utf-8")
    return path


TORN_TAIL = b"- seq: 3\n  role: user\n  at: '2026-11-21T09:00:03.000Z'\n  text: torn refun"


def build_fixture(data: Path) -> None:
    """Three users, one whose id needs encoding twice over, two archives in one second,
    a live dialog, and a torn live journal.

    alice     2026-11-20-10-00-00.yaml    disconnect  refund question, multi-line answer
    alice     2026-11-20-10-00-00-2.yaml  user        quotes, colons, non-ASCII
    alice     2026-10-01-09-00-00.yaml    timeout     an old refund
    alice     current.yaml                            live, "live refund talk"
    auth0|42  2026-11-21-08-00-00.yaml    shutdown    refund, and an error message
    a/b       current.yaml (torn)                     two whole messages, a torn third
    """
    write_archive(
        data,
        "alice",
        "2026-11-20-10-00-00.yaml",
        [
            ("user", "Where is my REFUND for order #1042?"),
            ("assistant", "It's on its way:\n  tracking ZX-99\nrefund issued"),
        ],
        ended="2026-11-20T10:00:00.500Z",
    )
    write_archive(
        data,
        "alice",
        "2026-11-20-10-00-00-2.yaml",
        [("user", "Don't forget: the Straße invoice"), ("assistant", 'say "yes"')],
        ended="2026-11-20T10:00:00.900Z",
        reason="user",
    )
    write_archive(
        data,
        "alice",
        "2026-10-01-09-00-00.yaml",
        [("user", "an old refund")],
        ended="2026-10-01T09:00:00.100Z",
        reason="timeout",
    )
    write_archive(
        data,
        "auth0|42",
        "2026-11-21-08-00-00.yaml",
        [("user", "refund please"), ("error", "upstream failed")],
        ended="2026-11-21T08:00:00.000Z",
        reason="shutdown",
    )
    journal = Journal(data, fsync="no")
    journal.append("alice", "user", "live refund talk")
    journal.append("a/b", "user", "first refund line")
    journal.append("a/b", "assistant", "second")
    torn = journal.layout.current_path("a/b")
    torn.write_bytes(torn.read_bytes()[:-4] + TORN_TAIL)  # a crash cut the third write


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    build_fixture(path)
    return path


@pytest.fixture
def journal(data: Path) -> Journal:
    return Journal(data, fsync="no")


def names(infos: list[ArchiveInfo]) -> list[tuple[str, str]]:
    return [(i.user, i.name) for i in infos]


# ---------------------------------------------------------------------------------------
# Time bounds and filters


def test_dates_and_times_become_utc_bounds() -> None:
    assert archives.parse_time("2026-11-21") == "2026-11-21T00:00:00.000Z"
    assert archives.parse_time("2026-11-21", end=True) == "2026-11-22T00:00:00.000Z"
    assert archives.parse_time("2026-11-21T10:30") == "2026-11-21T10:30:00.000Z"
    assert archives.parse_time("2026-11-21T10:30:00Z", end=True) == "2026-11-21T10:30:00.001Z"
    assert archives.parse_time("2026-11-21T12:30:00+02:00") == "2026-11-21T10:30:00.000Z"
    assert archives.parse_time("2026-12-31", end=True) == "2027-01-01T00:00:00.000Z"
    for bad in ("yesterday", "2026-13-01", "21/11/2026", ""):
        with pytest.raises(ValueError, match="neither a date"):
            archives.parse_time(bad)


def test_a_name_only_rules_out_archives_that_surely_ended_earlier() -> None:
    # Archived at 10:30:00.999 and renamed within that second: the name says 10-30-00.
    where = archives.Filter(since="2026-11-21T10:30:00.999Z")
    assert not where.too_old("2026-11-21-10-30-00.yaml")
    assert not where.too_old("2026-11-21-10-30-00-2.yaml")
    assert where.too_old("2026-11-21-10-29-59.yaml")
    info = ArchiveInfo("u", "2026-11-21-10-30-00.yaml", "d", "s", None, None, 1)
    assert archives.archive_time(info) == "2026-11-21T10:30:00.000Z"  # no trailer: the name


def test_list_is_newest_first_with_same_second_names_in_order(journal: Journal) -> None:
    assert names(archives.list_archives(journal)) == [
        ("auth0|42", "2026-11-21-08-00-00.yaml"),
        ("alice", "2026-11-20-10-00-00-2.yaml"),
        ("alice", "2026-11-20-10-00-00.yaml"),
        ("alice", "2026-10-01-09-00-00.yaml"),
    ]


def test_list_filters(journal: Journal) -> None:
    def listed(**kw: str) -> list[str]:
        return [i.name for i in archives.list_archives(journal, where=archives.Filter(**kw))]

    assert listed(user="auth0|42") == ["2026-11-21-08-00-00.yaml"]
    assert listed(reason="timeout") == ["2026-10-01-09-00-00.yaml"]
    assert listed(since="2026-11-20T10:00:00.600Z") == [
        "2026-11-21-08-00-00.yaml",
        "2026-11-20-10-00-00-2.yaml",
    ]
    assert listed(since="2026-11-20T00:00:00.000Z", before="2026-11-21T00:00:00.000Z") == [
        "2026-11-20-10-00-00-2.yaml",
        "2026-11-20-10-00-00.yaml",
    ]
    assert [i.name for i in archives.list_archives(journal, limit=1)] == [
        "2026-11-21-08-00-00.yaml"
    ]
    with pytest.raises(archives.UnknownUser):
        archives.list_archives(journal, "bob")


def test_listing_reads_only_the_ends_of_each_file(data: Path, journal: Journal) -> None:
    # Bytes in the middle that no parser accepts: listing never looks at them.
    texts = [("user", f"message {i} " + "x" * 200) for i in range(60)]
    path = write_archive(
        data, "big", "2026-11-19-00-00-00.yaml", texts, ended="2026-11-19T00:00:00.000Z"
    )
    raw = path.read_bytes()
    middle = len(raw) // 2
    path.write_bytes(raw[:middle] + b"\xff\xfe not yaml \x00" + raw[middle + 14 :])
    [info] = archives.list_archives(journal, "big")
    assert (info.messages, info.reason, info.ended) == (
        60,
        "disconnect",
        "2026-11-19T00:00:00.000Z",
    )


# ---------------------------------------------------------------------------------------
# Search


def hits(
    journal: Journal,
    text: str,
    *,
    regex: bool = False,
    role: str | None = None,
    current: bool = False,
    **where: str,
) -> list[tuple[str, str, int]]:
    query = search.Query.compile(text, regex=regex)
    found = search.search(journal, query, archives.Filter(**where), role=role, current=current)
    return [(h.user, h.archive, h.message.seq) for h in found]


def test_search_finds_messages_case_insensitively_newest_first(journal: Journal) -> None:
    assert hits(journal, "refund") == [
        ("auth0|42", "2026-11-21-08-00-00.yaml", 1),
        ("alice", "2026-11-20-10-00-00.yaml", 1),
        ("alice", "2026-11-20-10-00-00.yaml", 2),
        ("alice", "2026-10-01-09-00-00.yaml", 1),
    ]


def test_search_sees_text_through_quoting_and_literal_blocks(journal: Journal) -> None:
    # Written as 'Don''t forget: ...' (quoted), "say \"yes\"" and a literal block.
    assert hits(journal, "don't forget") == [("alice", "2026-11-20-10-00-00-2.yaml", 1)]
    assert hits(journal, 'say "yes"') == [("alice", "2026-11-20-10-00-00-2.yaml", 2)]
    assert hits(journal, "STRASSE") == []  # IGNORECASE does not fold ß to ss, like grep -i
    assert hits(journal, "straße") == [("alice", "2026-11-20-10-00-00-2.yaml", 1)]
    assert hits(journal, "way:\n  tracking") == [("alice", "2026-11-20-10-00-00.yaml", 2)]


def test_search_whitespace_in_the_query_matches_any_whitespace(journal: Journal) -> None:
    """A phrase typed on one line finds a message whose words a line break separates."""
    wanted = [("alice", "2026-11-20-10-00-00.yaml", 2)]
    assert hits(journal, "way: tracking") == wanted
    assert hits(journal, "  its WAY:   tracking zx-99 refund  ") == wanted
    assert hits(journal, "way:tracking") == []  # no whitespace in the query: none in the text
    journal.append("q", "user", "quoted\tone \n\n two")  # written double-quoted, with escapes
    assert journal.archive("q", "user") is not None
    [(user, _, seq)] = hits(journal, "one two")
    assert (user, seq) == ("q", 1)


def test_search_filters(journal: Journal) -> None:
    assert hits(journal, "refund", role="assistant") == [("alice", "2026-11-20-10-00-00.yaml", 2)]
    assert hits(journal, "refund", reason="timeout") == [("alice", "2026-10-01-09-00-00.yaml", 1)]
    assert hits(journal, "refund", user="auth0|42") == [("auth0|42", "2026-11-21-08-00-00.yaml", 1)]
    assert hits(journal, "refund", since="2026-11-21T00:00:00.000Z") == [
        ("auth0|42", "2026-11-21-08-00-00.yaml", 1)
    ]
    assert hits(journal, "refund", before="2026-11-01T00:00:00.000Z") == [
        ("alice", "2026-10-01-09-00-00.yaml", 1)
    ]
    assert hits(journal, "upstream", role="error") == [("auth0|42", "2026-11-21-08-00-00.yaml", 2)]


def test_search_live_journals_leaves_out_a_torn_tail_without_fixing_it(
    journal: Journal,
) -> None:
    torn = journal.layout.current_path("a/b").read_bytes()
    found = hits(journal, "refun", current=True)
    # Live dialogs first (users in order), then archives; the torn third message is out.
    assert found[:3] == [
        ("a/b", "current.yaml", 1),
        ("alice", "current.yaml", 1),
        ("auth0|42", "2026-11-21-08-00-00.yaml", 1),
    ]
    assert ("a/b", "current.yaml", 3) not in found
    assert journal.layout.current_path("a/b").read_bytes() == torn  # read-only
    assert all(archive != "current.yaml" for _, archive, _ in hits(journal, "refun"))


def test_search_by_regular_expression(journal: Journal) -> None:
    assert hits(journal, r"ZX-\d+", regex=True) == [("alice", "2026-11-20-10-00-00.yaml", 2)]
    assert hits(journal, r"^refund", regex=True) == [
        ("auth0|42", "2026-11-21-08-00-00.yaml", 1)
    ]  # ^ is the start of the message text, not of a line in the file
    assert hits(journal, "REFUND", regex=True) == [("alice", "2026-11-20-10-00-00.yaml", 1)]


def test_hits_carry_spans_and_json(journal: Journal) -> None:
    [hit] = search.search(journal, search.Query.compile("zx-99"))
    assert hit.message.text[slice(*hit.spans[0])] == "ZX-99"
    doc = hit.as_json()
    assert doc["user"] == "alice" and doc["archive"] == "2026-11-20-10-00-00.yaml"
    assert doc["seq"] == 2 and doc["role"] == "assistant" and doc["matches"] == [list(hit.spans[0])]
    assert doc["dialog"] == "d-2026-11-20-10-00-00"


def test_search_reads_a_file_another_tool_wrote(data: Path, journal: Journal) -> None:
    directory = data / "users" / "tool" / "dialogs" / "archived"
    directory.mkdir(parents=True)
    doc = {
        "user": "tool",
        "dialog": "d-x",
        "started": "2026-11-01T00:00:00.000Z",
        "messages": [
            {"seq": 1, "role": "user", "at": "2026-11-01T00:00:01.000Z", "text": "a refund"}
        ],
        "ended": "2026-11-01T00:01:00.000Z",
        "reason": "user",
    }
    (directory / "2026-11-01-00-01-00.yaml").write_text(
        yaml.safe_dump(doc, default_flow_style=True)
    )
    assert hits(journal, "refund", user="tool") == [("tool", "2026-11-01-00-01-00.yaml", 1)]


def test_letters_that_fold_to_ascii_are_found(data: Path, journal: Journal) -> None:
    # re.IGNORECASE matches the Kelvin sign to k and the long s to s: so must search.
    write_archive(
        data,
        "k",
        "2026-11-01-00-00-00.yaml",
        [("user", "\u212aelvin and \u017fun")],
        ended="2026-11-01T00:00:00.000Z",
    )
    assert hits(journal, "kelvin") == [("k", "2026-11-01-00-00-00.yaml", 1)]
    assert hits(journal, "SUN") == [("k", "2026-11-01-00-00-00.yaml", 1)]


ALPHABET = list("abkKsSiI '\":#-\\\n\t|>é\u212a\u017f\u0130\u0131ß\x85\u2028\x1b")


def brute_force(dialog: Dialog, text: str) -> list[tuple[int, list[tuple[int, int]]]]:
    # The query's words, any whitespace between them (README, Searching).
    words = text.split()
    loose = r"\s+".join(re.escape(word) for word in words) if words else re.escape(text)
    pattern = re.compile(loose, re.IGNORECASE)
    out = []
    for message in dialog.messages:
        spans = [m.span() for m in pattern.finditer(message.text) if m.end() > m.start()]
        if spans:
            out.append((message.seq, spans))
    return out


TO_ASCII = str.maketrans("\u212a\u017f\u0130\u0131", "ksiI")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(
        st.text(st.sampled_from(ALPHABET) | st.characters(), max_size=40), min_size=1, max_size=6
    ),
    pick=st.integers(min_value=0),
    bounds=st.tuples(st.integers(0, 40), st.integers(1, 12)),
    swap=st.booleans(),
    fold=st.booleans(),
)
@example(texts=["x\n  y"], pick=0, bounds=(0, 5), swap=False, fold=False)
@example(texts=["- seq: 9"], pick=0, bounds=(0, 8), swap=False, fold=False)
@example(texts=["user: x"], pick=0, bounds=(0, 4), swap=False, fold=False)
@example(texts=["a: it's"], pick=0, bounds=(3, 4), swap=False, fold=False)  # 'a: it''s'
@example(texts=['\x1b say "hi"\\'], pick=0, bounds=(5, 6), swap=False, fold=False)
@example(texts=["a", "\u212aelvin"], pick=1, bounds=(0, 6), swap=False, fold=True)
def test_fast_search_finds_exactly_what_parsing_everything_finds(
    texts: list[str], pick: int, bounds: tuple[int, int], swap: bool, fold: bool
) -> None:
    """The needle is cut from one of the texts, then perhaps changes case, and perhaps
    spells the characters that IGNORECASE folds to ASCII letters as those letters."""
    source = texts[pick % len(texts)]
    start = min(bounds[0], len(source))
    needle = source[start : start + bounds[1]] or "a"
    if swap:
        needle = needle.swapcase()
    if fold:
        needle = needle.translate(TO_ASCII)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        roles = ["user", "assistant"]
        path = write_archive(
            data,
            "u",
            "2026-11-21-00-00-00.yaml",
            [(roles[i % 2], t) for i, t in enumerate(texts)],
            ended="2026-11-21T00:00:00.000Z",
        )
        expected = brute_force(parse_dialog(path.read_bytes()), needle)
        found = search.search(Journal(data), search.Query.compile(needle))
        assert [(h.message.seq, h.spans) for h in found] == expected


# ---------------------------------------------------------------------------------------
# Watch

WRITER = """
import sys
from pathlib import Path
from archiver.journal import Journal
journal = Journal(Path(sys.argv[1]), fsync="no")
for user in sys.argv[2:]:
    journal.append(user, "user", "hello from another process")
    print(journal.archive(user, "user").name, flush=True)
"""


def write_from_another_process(data: Path, *users: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(data), *users],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


@contextlib.contextmanager
def watching(journal: Journal, user: str | None = None) -> Iterator[queue.Queue[ArchiveInfo]]:
    stop = threading.Event()
    ready = threading.Event()
    seen: queue.Queue[ArchiveInfo] = queue.Queue()

    def run() -> None:
        for info in archives.watch_archives(journal, user, stop_event=stop, ready=ready.set):
            seen.put(info)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "the watch never started"
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the watch did not stop on its stop event"


def test_watch_sees_archives_another_process_writes(journal: Journal, data: Path) -> None:
    with watching(journal) as seen:
        [name] = write_from_another_process(data, "alice")
        info = seen.get(timeout=10)
    assert (info.user, info.name, info.reason, info.messages) == ("alice", name, "user", 2)


def test_watch_sees_the_first_archive_of_a_new_user_and_filters_by_user(
    journal: Journal, data: Path
) -> None:
    # Both users are new: their directories and archives appear in one quick burst,
    # before a watch on the new directories could be in place.
    with watching(journal, "zed|new") as seen:
        write_from_another_process(data, "aaa", "zed|new")
        info = seen.get(timeout=10)
        assert info.user == "zed|new"
        assert seen.empty()


def test_watch_a_data_directory_with_no_users_yet(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with watching(Journal(data)) as seen:
        [name] = write_from_another_process(data, "first")
        info = seen.get(timeout=10)
    assert (info.user, info.name) == ("first", name)


def test_watch_refuses_a_missing_data_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        next(archives.watch_archives(Journal(tmp_path / "nowhere")))


# ---------------------------------------------------------------------------------------
# Sweep, prune, forget


def test_sweep_archives_only_stale_dialogs(journal: Journal) -> None:
    import os
    import time

    journal.append("fresh", "user", "just now")
    old = time.time() - 3600
    os.utime(journal.layout.current_path("alice"), (old, old))
    swept = list(archive_writes.sweep(journal, 600))
    assert [(a.user, a.reason) for a in swept] == [("alice", "timeout")]
    assert (
        journal.layout.current_path("fresh").exists()
        and not journal.layout.current_path("alice").exists()
    )


def test_prune_deletes_exactly_the_archives_that_ended_before_the_cutoff(
    journal: Journal, data: Path
) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC).timestamp()  # cutoff: 11-20 12:00
    before = set(data.rglob("*.yaml"))
    dry = [p.path for p in archive_writes.prune(journal, 1, dry_run=True, now=now)]
    assert set(data.rglob("*.yaml")) == before
    pruned = [p.path for p in archive_writes.prune(journal, 1, now=now)]
    assert pruned == dry
    assert {p.name for p in pruned} == {
        "2026-11-20-10-00-00.yaml",
        "2026-11-20-10-00-00-2.yaml",
        "2026-10-01-09-00-00.yaml",
    }
    assert set(data.rglob("*.yaml")) == before - set(pruned)
    assert list(archive_writes.prune(journal, 1, now=now)) == []


def test_forget_removes_everything_of_one_user_and_nothing_else(
    journal: Journal, data: Path
) -> None:
    journal.finish_crashed("a/b")  # the torn tail goes to a side file
    side_files = list(journal.layout.dialogs_dir("a/b").glob("current.yaml.torn-*"))
    assert side_files
    others = {p for p in data.rglob("*") if user_dir_name("a/b") not in p.parts}
    expected = {
        p.relative_to(data)
        for p in (data / "users" / user_dir_name("a/b")).rglob("*")
        if p.is_file()
    }
    done = archive_writes.forget(journal, "a/b")
    assert set(done.files) == expected
    assert {p.name for p in done.files} >= {"current.yaml", ".lock", side_files[0].name}
    assert not (data / "users" / user_dir_name("a/b")).exists()
    assert {p for p in data.rglob("*")} == others
    assert "1 journal" in done.summary() and "1 torn side file" in done.summary()
    with pytest.raises(archives.UnknownUser):
        archive_writes.forget(journal, "a/b")


# ---------------------------------------------------------------------------------------
# Rendering


def test_render_escapes_control_characters() -> None:
    dialog = Dialog(
        "u\x1b[2J",
        "d-1",
        "2026-11-21T10:00:00.000Z",
        [
            Message(1, "user", "2026-11-21T10:00:01.000Z", "red \x1b[31malert\nsecond line"),
            Message(2, "assistant", "2026-11-22T10:00:01.000Z", "next day", interrupted=True),
        ],
    )
    text = render.render(dialog, width=60)
    assert "\x1b" not in text and "\\x1b[31malert" in text and "user u\\x1b[2J" in text
    assert "10:00:01  #1 user\n    red \\x1b[31malert\n    second line" in text
    assert "2026-11-22 10:00:01  #2 assistant  [interrupted]" in text


@pytest.mark.parametrize("columns", [0, 1])
def test_a_terminal_that_reports_no_width_gets_the_default(
    monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    """Under `script` a terminal can report 0 columns: wrapping at that would put a word on
    each line. 0 falls back to COLUMNS, then to the default, as shutil does."""
    monkeypatch.setattr(os, "get_terminal_size", lambda *_: os.terminal_size((columns, 0)))
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    expected = 100 if columns == 0 else 1
    assert render.terminal_width() == expected
    monkeypatch.setenv("COLUMNS", "77")
    assert render.terminal_width() == 77
    if columns == 0:
        long = Message(1, "user", "2026-11-21T10:00:01.000Z", "word " * 30)
        monkeypatch.delenv("COLUMNS")
        text = render.render(Dialog("u", "d-1", "2026-11-21T10:00:00.000Z", [long]))
        assert max(len(line) for line in text.splitlines()) > 60, text


def test_a_long_matching_line_is_cut_around_the_match() -> None:
    text = "a" * 500 + "NEEDLE" + "b" * 500
    hit = search.Hit("u", "x.yaml", "d", Message(1, "user", "t", text), [(500, 506)])

    def mark(s: str, **kw: object) -> str:
        return f"<{s}>" if kw.get("bold") else s

    [line] = render.hit_lines(hit, style=mark)
    assert "<NEEDLE>" in line and "…" in line and len(line) < 250


def test_search_keeps_the_interrupted_flag(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync="no")
    journal.append("u", "user", "tell me about refunds")
    journal.append("u", "assistant", "Refunds take\nfive days", interrupted=True)
    journal.archive("u", "user")
    found = list(search.search(journal, search.Query.compile("refund")))
    assert [(h.message.seq, h.message.interrupted) for h in found] == [(1, False), (2, True)]
    assert found[1].message.text == "Refunds take\nfive days"
    assert found[1].as_json()["interrupted"] is True


def test_forked_search_finds_what_one_process_finds(
    journal: Journal, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = data / "users" / "alice" / "dialogs" / "archived" / "2026-11-19-00-00-00.yaml"
    broken.write_bytes(b"user: alice\nmessages: [refund\n")  # fails in whichever process
    monkeypatch.setattr(search, "PARALLEL_FROM", 1)

    def run(workers: int) -> tuple[list[tuple[str, str, int]], list[str]]:
        errors: list[str] = []
        found = search.search(
            journal,
            search.Query.compile("refun"),
            current=True,
            workers=workers,
            on_error=lambda path, exc: errors.append(f"{path.name}: {exc}"),
        )
        return [(h.user, h.archive, h.message.seq) for h in found], errors

    serial = run(1)
    assert serial[0] and len(serial[1]) == 1
    assert serial[1][0].startswith(f"{broken.name}: not a valid YAML document")
    for workers in (2, 5, 7):  # the broken file (6th) falls to a child, or to this process
        assert run(workers) == serial


def test_a_failed_search_worker_is_an_error(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "PARALLEL_FROM", 1)
    share = search._search_share

    def failing(sources: object, index: int, *args: object) -> object:
        if index:
            raise RuntimeError("boom")
        return share(sources, index, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(search, "_search_share", failing)
    with pytest.raises(OSError, match="a search worker failed"):
        list(search.search(journal, search.Query.compile("refund"), workers=2))
