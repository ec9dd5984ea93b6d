from __future__ import annotations

import csv
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import jwt
import pytest
from click.testing import CliRunner, Result

from archiver import archives, cli, cli_archives, redact
from archiver.cli import main
from archiver.journal import Journal
from archiver.layout import user_dir_name
from tests.test_review import build_fixture, write_archive, write_from_another_process

ROOT = Path(__file__).parent.parent
ALICE_NEWEST = "2026-11-20-10-00-00-2.yaml"
ALICE_SAME_SECOND = "2026-11-20-10-00-00.yaml"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    build_fixture(path)
    return path


def run(data: Path | None, *args: str, **kw: Any) -> Result:
    """``archiver ARGS --data DATA`` in-process; stderr kept apart from stdout."""
    extra = ["--data", str(data)] if data is not None else []
    return CliRunner().invoke(main, [*args, *extra], catch_exceptions=False, **kw)


def lines(result: Result) -> list[list[str]]:
    return [line.split("\t") for line in result.stdout.splitlines()]


# ---------------------------------------------------------------------------------------
# token


def test_token_uses_the_generated_secret(tmp_path: Path) -> None:
    result = run(tmp_path, "token", "alice", "--admin")
    assert result.exit_code == 0, result.output
    secret = (tmp_path / ".jwt-secret").read_text().strip()
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["role"] == "admin"


def test_token_says_which_secret_signed_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = run(tmp_path, "token", "alice")
    secret_file = tmp_path.resolve() / ".jwt-secret"
    assert "WARNING: created a new secret in " + str(secret_file) in first.stderr
    assert "no server has used this data directory yet" in first.stderr
    again = run(tmp_path, "token", "alice")
    assert again.stderr == f"signed with the secret in {secret_file}\n"
    monkeypatch.setenv("ARCHIVER_JWT_SECRET", "s" * 40)
    configured = run(tmp_path, "token", "alice")
    assert configured.stderr == "signed with ARCHIVER_JWT_SECRET\n"
    assert jwt.decode(configured.stdout.strip(), "s" * 40, algorithms=["HS256"])["sub"] == "alice"


@pytest.mark.parametrize("ttl", ["-5", "0"])
def test_token_refuses_a_ttl_that_is_not_positive(tmp_path: Path, ttl: str) -> None:
    result = run(tmp_path, "token", "alice", "--ttl", ttl)
    assert result.exit_code == 2 and result.stdout == ""
    assert "--ttl" in result.stderr
    assert not (tmp_path / ".jwt-secret").exists(), "a refused command creates nothing"


# ---------------------------------------------------------------------------------------
# list


def test_list_prints_one_line_per_archive_newest_first(data: Path) -> None:
    result = run(data, "list")
    assert result.exit_code == 0, result.output
    assert lines(result) == [
        [
            "auth0|42",
            "2026-11-21-08-00-00.yaml",
            "2026-11-21T00:00:00.000Z",
            "2026-11-21T08:00:00.000Z",
            "shutdown",
            "2",
        ],
        [
            "alice",
            ALICE_NEWEST,
            "2026-11-20T00:00:00.000Z",
            "2026-11-20T10:00:00.900Z",
            "user",
            "2",
        ],
        [
            "alice",
            ALICE_SAME_SECOND,
            "2026-11-20T00:00:00.000Z",
            "2026-11-20T10:00:00.500Z",
            "disconnect",
            "2",
        ],
        [
            "alice",
            "2026-10-01-09-00-00.yaml",
            "2026-10-01T00:00:00.000Z",
            "2026-10-01T09:00:00.100Z",
            "timeout",
            "1",
        ],
    ]


def test_list_filters_and_json(data: Path) -> None:
    def names(*args: str) -> list[str]:
        return [row[1] for row in lines(run(data, "list", *args))]

    assert names("--user", "auth0|42") == ["2026-11-21-08-00-00.yaml"]
    assert names("--since", "2026-11-20", "--until", "2026-11-20") == [
        ALICE_NEWEST,
        ALICE_SAME_SECOND,
    ]
    assert names("--since", "2026-11-20T10:00:00.600Z") == [
        "2026-11-21-08-00-00.yaml",
        ALICE_NEWEST,
    ]
    assert names("--until", "2026-11-20T10:00:00.500Z") == [
        ALICE_SAME_SECOND,
        "2026-10-01-09-00-00.yaml",
    ]
    assert names("--reason", "timeout") == ["2026-10-01-09-00-00.yaml"]
    assert names("--limit", "2") == ["2026-11-21-08-00-00.yaml", ALICE_NEWEST]
    docs = json.loads(run(data, "list", "--json", "--user", "alice").stdout)
    assert docs[0] == {
        "user": "alice",
        "name": ALICE_NEWEST,
        "dialog": "d-2026-11-20-10-00-00-2",
        "started": "2026-11-20T00:00:00.000Z",
        "ended": "2026-11-20T10:00:00.900Z",
        "reason": "user",
        "messages": 2,
    }
    assert len(docs) == 3


def test_list_exit_codes_and_errors(data: Path, tmp_path: Path) -> None:
    empty = run(data, "list", "--since", "2030-01-01")
    assert (empty.exit_code, empty.stdout, empty.stderr) == (1, "", "no archive matches\n")
    assert json.loads(run(data, "list", "--json", "--since", "2030-01-01").stdout) == []
    unknown = run(data, "list", "--user", "bob")
    assert unknown.exit_code == 2, "an error, as grep's missing file: 1 is only 'nothing found'"
    assert unknown.stderr == "Error: no user 'bob' in this data directory\n"
    bad_date = run(data, "list", "--since", "last tuesday")
    assert bad_date.exit_code == 2 and "neither a date" in bad_date.stderr
    assert run(data, "list", "--reason", "bored").exit_code == 2
    assert run(data, "list", "--user", "").exit_code == 2  # an empty id, not everyone
    assert run(data, "list", "--limit", "0").exit_code == 2
    assert run(data, "list", "--bogus").exit_code == 2
    nowhere = run(tmp_path / "nowhere", "list")
    assert nowhere.exit_code == 2 and "no data directory" in nowhere.stderr


def test_the_data_directory_comes_from_the_environment(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCHIVER_DATA_DIR", str(data))
    assert len(lines(run(None, "list"))) == 4


# ---------------------------------------------------------------------------------------
# show


def test_show_renders_a_conversation(data: Path) -> None:
    result = run(data, "show", "alice", ALICE_SAME_SECOND)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("dialog d-2026-11-20-10-00-00  user alice\n")
    assert "ended 2026-11-20 10:00:00 UTC (disconnect)  2 messages" in result.stdout
    assert "10:00:01  #1 user\n    Where is my REFUND for order #1042?\n" in result.stdout
    assert "#2 assistant\n    It's on its way:\n      tracking ZX-99\n    refund issued" in (
        result.stdout
    )
    assert "\x1b[" not in result.stdout  # no colour when not on a terminal
    coloured = run(data, "show", "alice", ALICE_SAME_SECOND, color=True)
    assert "\x1b[" in coloured.stdout


def test_show_by_path_and_as_json(data: Path) -> None:
    path = data / "users" / "auth0%7C42" / "dialogs" / "archived" / "2026-11-21-08-00-00.yaml"
    shown = run(None, "show", str(path), "--json")
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert doc["user"] == "auth0|42" and doc["reason"] == "shutdown"
    assert [m["role"] for m in doc["messages"]] == ["user", "error"]


def test_show_a_live_dialog_leaves_out_its_torn_tail(data: Path) -> None:
    result = run(data, "show", "a/b", "current.yaml", "--json")
    assert result.exit_code == 0, result.output
    assert [m["text"] for m in json.loads(result.stdout)["messages"]] == [
        "first refund line",
        "second",
    ]


def test_show_with_a_user_alone_shows_the_newest_archive(data: Path) -> None:
    alone = run(data, "show", "alice", "--json")
    assert alone.exit_code == 0, alone.output
    newest = run(data, "list", "--user", "alice", "--limit", "1", "--json")
    assert json.loads(alone.stdout)["dialog"] == json.loads(newest.stdout)[0]["dialog"]
    live_only = run(data, "show", "a/b")
    assert live_only.exit_code == 2
    assert "has no archive yet; their live dialog: archiver show a/b current.yaml" in (
        live_only.stderr
    )


def test_show_errors(data: Path, tmp_path: Path) -> None:
    missing = run(data, "show", "alice", "2020-01-01-00-00-00.yaml")
    assert missing.exit_code == 2
    assert missing.stderr == "Error: no archive '2020-01-01-00-00-00.yaml' for user 'alice'\n"
    assert run(data, "show", "alice", "../current.yaml").exit_code == 2
    no_live = run(data, "show", "auth0|42", "current.yaml")
    assert no_live.stderr == "Error: user 'auth0|42' has no live dialog\n"
    unknown = run(data, "show", "bob", ALICE_NEWEST)
    assert unknown.exit_code == 2 and "no user 'bob'" in unknown.stderr
    gone = run(data, "show", str(tmp_path / "gone.yaml"))
    assert gone.exit_code == 2 and gone.stderr.startswith("Error: no file ")
    assert "archiver list --user " in gone.stderr, "says how to find an archive's name"
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"\xff\xfe")
    bad = run(None, "show", str(junk))
    assert bad.exit_code == 2 and "is not a dialog file" in bad.stderr
    assert run(None, "show", str(tmp_path)).exit_code == 2
    for result in (missing, unknown, gone, bad):
        assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


# ---------------------------------------------------------------------------------------
# search


def test_search_prints_where_each_matching_line_is(data: Path) -> None:
    result = run(data, "search", "refund", "--scan")  # the scan: every archive read
    assert result.exit_code == 0, result.output
    indexed = run(data, "search", "refund")  # the index: the same, in the same order
    assert indexed.stdout == result.stdout
    # Best first (bm25, which favours the shorter message: "refund issued" is a line of
    # line of a longer one), then the newer archive.
    assert result.stdout.splitlines() == [
        "auth0|42  2026-11-21-08-00-00.yaml  #1 user  refund please",
        "alice  2026-10-01-09-00-00.yaml  #1 user  an old refund",
        f"alice  {ALICE_SAME_SECOND}  #1 user  Where is my REFUND for order #1042?",
        f"alice  {ALICE_SAME_SECOND}  #2 assistant  refund issued",
    ]


def test_search_highlights_only_on_a_terminal(data: Path) -> None:
    plain = run(data, "search", "zx-99")
    assert "\x1b[" not in plain.stdout
    coloured = run(data, "search", "zx-99", color=True)
    assert "tracking \x1b[31m\x1b[1mZX-99\x1b[0m" in coloured.stdout


def test_search_options(data: Path) -> None:
    def found(*args: str) -> list[tuple[str, str, int]]:
        result = run(data, "search", *args, "--json")
        return [(h["user"], h["archive"], h["seq"]) for h in json.loads(result.stdout)]

    assert found("refund", "--role", "assistant") == [("alice", ALICE_SAME_SECOND, 2)]
    assert found("refund", "--user", "auth0|42") == [("auth0|42", "2026-11-21-08-00-00.yaml", 1)]
    assert found("refund", "--reason", "timeout") == [("alice", "2026-10-01-09-00-00.yaml", 1)]
    assert found("refund", "--since", "2026-11-21") == [("auth0|42", "2026-11-21-08-00-00.yaml", 1)]
    assert found("refund", "--until", "2026-10-31") == [("alice", "2026-10-01-09-00-00.yaml", 1)]
    assert found("refund", "--limit", "1") == [("auth0|42", "2026-11-21-08-00-00.yaml", 1)]
    assert found(r"ZX-\d+", "--regex") == [("alice", ALICE_SAME_SECOND, 2)]
    assert found("don't forget") == [("alice", ALICE_NEWEST, 1)]
    assert found("refun*", "--current")[:2] == [
        ("a/b", "current.yaml", 1),
        ("alice", "current.yaml", 1),
    ]
    [hit] = json.loads(run(data, "search", "tracking", "--json").stdout)
    assert hit["text"][hit["matches"][0][0] : hit["matches"][0][1]] == "tracking"
    assert set(hit) == {"user", "archive", "dialog", "seq", "role", "at", "text", "matches"}


def test_search_a_phrase_across_lines(data: Path) -> None:
    for scan in ([], ["--scan"]):
        found = run(data, "search", '"way: tracking zx-99"', "--json", *scan)
        assert found.exit_code == 0, found.output
        [hit] = json.loads(found.stdout)
        assert hit["text"].startswith("It's on its way:\n")
        assert hit["matches"] == [[hit["text"].index("way:"), hit["text"].index("ZX-99") + 5]]


def test_search_exit_codes(data: Path) -> None:
    none = run(data, "search", "no such words")  # builds the index first, and says so
    assert (none.exit_code, none.stdout) == (1, "")
    assert none.stderr.startswith("building the search index"), none.stderr
    again = run(data, "search", "no such words")
    assert again.stderr == "no message matches 'no such words'\n"
    assert run(data, "search", "no such words", "--json").stdout == "[]\n"
    bad = run(data, "search", "(unclosed", "--regex")
    assert bad.exit_code == 2 and "bad regular expression" in bad.stderr
    assert run(data, "search", "").exit_code == 2
    assert run(data, "search", "x", "--role", "robot").exit_code == 2
    unknown = run(data, "search", "x", "--user", "bob")
    assert (
        unknown.exit_code == 2 and unknown.stderr == "Error: no user 'bob' in this data directory\n"
    )


def test_search_warns_about_an_unreadable_file_and_goes_on(data: Path) -> None:
    broken = data / "users" / "alice" / "dialogs" / "archived" / "2026-11-19-00-00-00.yaml"
    broken.write_bytes(b"user: alice\nmessages: [refund\n")
    for scan in ([], ["--scan"]):
        result = run(data, "search", "refund", "--user", "alice", *scan)
        assert result.exit_code == 0
        assert f"warning: skipped {broken}: " in result.stderr
        assert len(result.stdout.splitlines()) == 3


# ---------------------------------------------------------------------------------------
# export


def test_export_writes_one_json_object_per_archive(data: Path) -> None:
    result = run(data, "export", "--user", "alice", "--since", "2026-11-01")
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["name"] for d in docs] == [ALICE_NEWEST, ALICE_SAME_SECOND]
    assert docs[1]["messages"][1] == {
        "seq": 2,
        "role": "assistant",
        "at": "2026-11-20T10:00:02.000Z",
        "text": "It's on its way:\n  tracking ZX-99\nrefund issued",
    }
    assert {k for k in docs[0] if k != "messages"} == {
        "user",
        "name",
        "dialog",
        "started",
        "ended",
        "reason",
    }
    everything = run(data, "export").stdout.splitlines()
    assert len(everything) == 4
    assert run(data, "export", "--until", "2020-01-01").exit_code == 1


# ---------------------------------------------------------------------------------------
# sweep


def test_sweep_archives_stale_live_dialogs_under_the_lock(data: Path) -> None:
    journal = Journal(data, fsync="no")
    journal.append("fresh", "user", "just now")
    old = time.time() - 3600
    os.utime(journal.layout.current_path("alice"), (old, old))
    result = run(data, "sweep", "--older-than", "600")
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith("archived alice ") and line.endswith(" (1 message)")
    name = line.split()[2]
    assert (journal.layout.dialogs_dir("alice") / "archived" / name).is_file()
    assert journal.layout.current_path("fresh").is_file()
    again = run(data, "sweep", "--older-than", "600")
    assert again.exit_code == 1 and "no live dialog idle for 600 s" in again.stderr


def test_sweep_repairs_and_archives_a_torn_journal(data: Path) -> None:
    result = run(data, "sweep", "--older-than", "0")
    assert result.exit_code == 0, result.output
    assert sorted(line.split()[1] for line in result.stdout.splitlines()) == ["a/b", "alice"]
    journal = Journal(data)
    [archive] = archives.user_archives(journal, "a/b")
    assert archive.messages == 2 and archive.reason == "timeout"
    side = list(journal.layout.dialogs_dir("a/b").glob("current.yaml.torn-*"))
    assert len(side) == 1 and side[0].read_bytes().startswith(b"- seq: 3\n")


def test_sweep_takes_its_default_from_the_session_timeout(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(data)
    old = time.time() - 3600
    os.utime(journal.layout.current_path("alice"), (old, old))
    monkeypatch.setenv("ARCHIVER_SESSION_TIMEOUT", "7200")
    assert run(data, "sweep").exit_code == 1
    monkeypatch.setenv("ARCHIVER_SESSION_TIMEOUT", "1800")
    assert run(data, "sweep").stdout.startswith("archived alice ")


# ---------------------------------------------------------------------------------------
# prune


def archive_ended(data: Path, user: str, days_ago: float) -> Path:
    moment = datetime.now(UTC) - timedelta(days=days_ago)
    name = moment.strftime("%Y-%m-%d-%H-%M-%S") + ".yaml"
    ended = moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return write_archive(data, user, name, [("user", f"{days_ago} days ago")], ended=ended)


def yaml_files(data: Path) -> set[Path]:
    return set(data.rglob("*.yaml"))


def test_prune_removes_exactly_the_archives_it_prints(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = {
        ("alice", archive_ended(data, "alice", 40)),
        ("auth0|42", archive_ended(data, "auth0|42", 31)),
    }
    keep = {archive_ended(data, "alice", 29), archive_ended(data, "alice", 0)}
    Journal(data, fsync="no").append("alice", "user", "live, never pruned")
    before = yaml_files(data)

    dry = run(data, "prune", "--older-than", "30", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert yaml_files(data) == before
    assert dry.stderr == "would remove 2 archives older than 30 days\n"

    done = run(data, "prune", "--older-than", "30")
    assert done.exit_code == 0, done.output
    printed = {tuple(line.split()[:3]) for line in done.stdout.splitlines()}
    assert printed == {("removed", user, path.name) for user, path in old}
    assert dry.stdout.replace("would remove", "removed") == done.stdout
    assert yaml_files(data) == before - {path for _, path in old}
    assert keep <= yaml_files(data)

    nothing = run(data, "prune", "--older-than", "30")
    assert nothing.exit_code == 1 and nothing.stdout == ""
    assert nothing.stderr == "removed 0 archives older than 30 days\n"
    dry_nothing = run(data, "prune", "--older-than", "30", "--dry-run")
    assert (dry_nothing.exit_code, dry_nothing.stdout) == (1, "")
    assert run(data, "prune").exit_code == 2  # --older-than is required
    assert run(data, "prune", "--older-than", "-1").exit_code == 2


# ---------------------------------------------------------------------------------------
# forget


def everything(data: Path) -> set[Path]:
    return set(data.rglob("*"))


def test_forget_erases_one_user_and_says_what_it_removed(data: Path) -> None:
    Journal(data, fsync="no").finish_crashed("a/b")  # the torn tail becomes a side file
    user_dir = data / "users" / user_dir_name("a/b")
    files = {p for p in user_dir.rglob("*") if p.is_file()}
    assert any(p.name.startswith("current.yaml.torn-") for p in files)
    before = everything(data)

    result = run(data, "forget", "a/b", "--yes")
    assert result.exit_code == 0, result.output
    removed = {data / line.removeprefix("removed ") for line in result.stdout.splitlines()}
    assert removed == files
    assert everything(data) == {p for p in before if user_dir not in (p, *p.parents)}
    assert result.stderr == (
        "forgot user 'a/b': 1 journal, 1 torn side file, 1 other file, 3 directories\n"
    )

    again = run(data, "forget", "a/b", "--yes")
    assert again.exit_code == 2 and "no user 'a/b'" in again.stderr


def test_forget_asks_first_and_needs_a_terminal_or_yes(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = everything(data)
    refused = run(data, "forget", "alice")
    assert refused.exit_code == 2 and "needs --yes" in refused.stderr
    monkeypatch.setattr(cli, "_interactive", lambda: True)
    declined = run(data, "forget", "alice", input="n\n")
    assert declined.exit_code == 1 and "3 archives" in declined.stdout
    assert everything(data) == before
    accepted = run(data, "forget", "alice", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert not (data / "users" / "alice").exists()
    assert (data / "users" / "auth0%7C42").is_dir()


# ---------------------------------------------------------------------------------------
# rm


def test_rm_deletes_one_archive_and_its_index_rows(data: Path, tmp_path: Path) -> None:
    assert run(data, "search", "forget").stdout  # builds the index; the archive is found
    target = data / "users" / "alice" / "dialogs" / "archived" / ALICE_NEWEST
    before = everything(data)
    log_file = tmp_path / "archiver.log"
    result = run(
        data, "rm", "alice", ALICE_NEWEST, "--yes", env={"ARCHIVER_LOG_FILE": str(log_file)}
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"removed {target}\n"
    assert everything(data) == before - {target}
    logged = log_file.read_text()
    assert " INFO archive.deleted user=alice name=2026-11-20-10-00-00-2.yaml dialog=" in logged
    # The index forgot it at once: searching finds nothing, and --scan agrees.
    for scan in ([], ["--scan"]):
        assert run(data, "search", "forget", *scan).exit_code == 1
    again = run(data, "rm", "alice", ALICE_NEWEST, "--yes")
    assert again.exit_code == 2 and "no archive" in again.stderr


def test_rm_asks_first_and_needs_a_terminal_or_yes(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = everything(data)
    refused = run(data, "rm", "alice", ALICE_NEWEST)
    assert refused.exit_code == 2 and "needs --yes" in refused.stderr
    assert run(data, "rm", "bob", ALICE_NEWEST, "--yes").exit_code == 2
    assert run(data, "rm", "alice", "../current.yaml", "--yes").exit_code == 2
    monkeypatch.setattr(cli_archives, "_interactive", lambda: True)
    declined = run(data, "rm", "alice", ALICE_NEWEST, input="n\n")
    assert declined.exit_code == 1 and everything(data) == before
    accepted = run(data, "rm", "alice", ALICE_NEWEST, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert len(everything(data)) == len(before) - 1


# ---------------------------------------------------------------------------------------
# export formats, import


def test_export_as_csv_markdown_and_html(data: Path) -> None:
    table = run(data, "export", "--format", "csv", "--user", "alice")
    assert table.exit_code == 0, table.output
    assert table.stdout_bytes.count(b"\r\n") == 4  # the header and three dialogs
    rows = list(csv.reader(io.StringIO(table.stdout_bytes.decode(), newline="")))
    assert rows[0][:3] == ["user", "dialog", "archive"] and len(rows) == 4
    assert [r[2] for r in rows[1:]] == [ALICE_NEWEST, ALICE_SAME_SECOND, "2026-10-01-09-00-00.yaml"]
    assert rows[2][-1] == "Where is my REFUND for order #1042?"
    md = run(data, "export", "--format", "md", "--user", "alice").stdout
    assert md.count("# Dialog ") == 3 and "It's on its way:\n  tracking ZX-99\n" in md
    page = run(data, "export", "--format", "html").stdout
    assert page.count("<article>") == 4 and page.startswith("<!doctype html>")
    assert run(data, "export", "--format", "csv", "--reason", "recovery").exit_code == 1


def journal_made_archives(data: Path) -> list[Path]:
    """Archives written by the journal itself: odd texts, an interrupted reply, an error,
    two in one second, a redacted one, and the optional entry fields (a key, upstream,
    first_token_ms, each in some entries and not in others)."""
    journal = Journal(data, fsync="no")
    texts = [
        "no",
        "2026-11-21",
        "it's: a 'quote' and \"more\"",
        "multi\nline\n  indented",
        "ü 😀 \t tab",
    ]
    for n, text in enumerate(texts):
        journal.append("bob", "user", text, key=f"k-{n}" if n % 2 else None)
        upstream = None if n == 4 else "echo"  # n == 4: as an entry from before the field
        first = n * 10 if n < 3 else None
        journal.append(
            "bob",
            "assistant",
            f"reply {n}",
            interrupted=n == 2,
            upstream=upstream,
            first_token_ms=first,
        )
        if n == 3:
            journal.append("bob", "error", "upstream_timeout", upstream="openai")
        journal.archive("bob", "disconnect")
    redacting = Journal(data, fsync="no")
    redacting.redactor = redact.load(("email",), None)
    redacting.append("a/b", "user", "mail me at x@example.com")
    redacting.archive("a/b", "user")
    return sorted((data / "users").glob("*/dialogs/archived/*.yaml"))


def test_export_forget_import_gives_the_same_bytes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    paths = journal_made_archives(data)
    assert any(p.name.endswith("-2.yaml") for p in paths), "two archives in one second"
    original = {p: p.read_bytes() for p in paths}
    joined = b"".join(original.values())
    for field in (b"  upstream: echo\n  first_token_ms: 0\n", b"  upstream: openai\n"):
        assert field in joined
    exported = run(data, "export")
    assert exported.exit_code == 0, exported.output
    dump = tmp_path / "all.jsonl"
    dump.write_text(exported.stdout, encoding="utf-8")
    assert run(data, "search", "reply").exit_code == 0  # an index, to see it follow
    for user in ("bob", "a/b"):
        assert run(data, "forget", user, "--yes").exit_code == 0
    imported = run(data, "import", str(dump))
    assert imported.exit_code == 0, imported.output
    assert imported.stderr == f"imported {len(paths)} archives\n"
    assert {
        p: p.read_bytes() for p in sorted((data / "users").glob("*/dialogs/archived/*.yaml"))
    } == original
    indexed = run(data, "search", "reply", "--json")
    assert len(json.loads(indexed.stdout)) == 5
    # Importing it again is refused as a whole: every dialog is already there.
    again = run(data, "import", str(dump))
    assert again.exit_code == 2 and "nothing imported" in again.stderr
    assert "already has dialog" in again.stderr
    assert {p: p.read_bytes() for p in original} == original


def test_import_refuses_a_bad_file_and_writes_nothing(data: Path, tmp_path: Path) -> None:
    good = json.loads(run(data, "export", "--user", "auth0|42").stdout)
    good["user"], good["dialog"] = "carol", "d-new"
    lines_ = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "dialog": "d-other", "reason": "exploded"}),
        json.dumps(
            {
                **good,
                "dialog": "d-third",
                "messages": [{"seq": 2, "role": "user", "at": "x", "text": "t"}],
            }
        ),
        json.dumps({**good, "name": "../../x.yaml", "dialog": "d-4"}),
        json.dumps(good),
    ]
    dump = tmp_path / "bad.jsonl"
    dump.write_text("\n".join(lines_) + "\n")
    before = everything(data)
    result = run(data, "import", str(dump))
    assert result.exit_code == 2 and result.stdout == ""
    for says in (
        "line 2: not JSON",
        "line 3: reason 'exploded'",
        "line 4: message 1 has seq 2",
        "line 5: '../../x.yaml' is not an archive name",
        "line 6: dialog d-new is also on line 1",
    ):
        assert says in result.stderr, (says, result.stderr)
    assert everything(data) == before
    dump.write_text(json.dumps(good) + "\n")
    assert run(data, "import", str(dump)).exit_code == 0
    assert (data / "users" / "carol" / "dialogs" / "archived" / good["name"]).is_file()


# ---------------------------------------------------------------------------------------
# watch


def _lines_of(stream: IO[str]) -> queue.Queue[str]:
    found: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            found.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return found


# The README's quick start runs from the directory holding ./data: watch must see archives
# land whether the directory is named absolutely, relatively, or not at all.
DATA_ARGS = {"absolute": ["--data", "{data}"], "relative": ["--data", "data"], "default": []}


def test_watch_ends_cleanly_on_sigterm(data: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "watch", "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "watching " in _lines_of(proc.stderr).get(timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("how", DATA_ARGS)
def test_watch_prints_archives_from_other_processes_until_ctrl_c(data: Path, how: str) -> None:
    args = [arg.format(data=data) for arg in DATA_ARGS[how]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "watch", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=data.parent,
        env=env,
        # Ctrl+C at a terminal: a shell's background job (CI under nohup, say) inherits
        # SIGINT ignored, and Python then never turns it into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = _lines_of(proc.stdout), _lines_of(proc.stderr)
        assert "watching " in err.get(timeout=20)  # the watch is in place
        [name] = write_from_another_process(data, "auth0|42")
        doc = json.loads(out.get(timeout=10))
        assert (doc["user"], doc["name"], doc["reason"]) == ("auth0|42", name, "user")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------
# help, docs/cli.md and the README


def test_every_command_has_examples_in_its_help() -> None:
    for name in cli.COMMANDS:
        text = CliRunner().invoke(main, [name, "--help"]).output
        assert f"  archiver {name}" in text, name


def test_no_summary_is_cut_in_the_command_list() -> None:
    """`archiver --help` lists each command with its first sentence, which click cuts with
    "..." when it is longer than the line has room for (an 80-column terminal)."""
    listing = CliRunner().invoke(main, ["--help"], terminal_width=80).stdout
    commands = listing.split("Commands:\n", 1)[1].splitlines()
    assert len(commands) == len(cli.COMMANDS)
    assert not [line for line in commands if line.endswith("...")], commands


CLI_DOC = ROOT / "docs" / "cli.md"


def test_cli_reference_matches_help() -> None:
    """docs/cli.md's CLI reference is the commands' help; regenerate it with
    ``python -m tests.test_cli`` after changing a command."""
    doc = CLI_DOC.read_text()
    assert "<!-- cli-reference -->" in doc, "docs/cli.md has no cli-reference block"
    block = doc.split("<!-- cli-reference -->\n")[1].split("<!-- /cli-reference -->")[0]
    assert block == cli.cli_reference()


def test_readme_cli_summary_names_every_command() -> None:
    section = (ROOT / "README.md").read_text().split("## Command line\n")[1].split("\n## ")[0]
    summarized = [
        line.split("`")[1].split()[1]
        for line in section.splitlines()
        if line.startswith("| `archiver ")
    ]
    assert summarized == cli.COMMANDS


def test_the_reference_is_what_help_prints() -> None:
    reference = cli.cli_reference()
    for name in cli.COMMANDS:
        text = (
            CliRunner()
            .invoke(
                main,
                [name, "--help"],
                prog_name="archiver",
                terminal_width=cli.REFERENCE_WIDTH,
                max_content_width=cli.REFERENCE_WIDTH,
            )
            .output
        )
        assert f"#### `archiver {name}`\n\n```\n{text}```\n" in reference


def write_cli_reference() -> None:
    text = CLI_DOC.read_text()
    head, _, rest = text.partition("<!-- cli-reference -->\n")
    _, _, tail = rest.partition("<!-- /cli-reference -->")
    if not rest:
        raise SystemExit("docs/cli.md has no <!-- cli-reference --> block to fill")
    CLI_DOC.write_text(
        f"{head}<!-- cli-reference -->\n{cli.cli_reference()}<!-- /cli-reference -->{tail}"
    )


if __name__ == "__main__":  # python -m tests.test_cli: rewrite docs/cli.md's CLI reference
    write_cli_reference()


# --------------------------------------------------------------------------------------
# sweep leaves a running server's dialogs alone; list --damaged


def test_sweep_skips_a_dialog_a_running_server_owns_unless_forced(make_server: Any) -> None:
    server = make_server()
    assert server.chat("live", "hello").status_code == 200
    runner = CliRunner()
    skipped = runner.invoke(main, ["sweep", "--older-than", "0", "--data", str(server.data)])
    assert skipped.exit_code == 1, skipped.output
    assert "skipped 1 dialog a running server owns" in skipped.stderr
    assert server.archives("live") == []
    forced = runner.invoke(
        main, ["sweep", "--older-than", "0", "--force", "--data", str(server.data)]
    )
    assert forced.exit_code == 0, forced.output
    assert len(server.archives("live")) == 1


def test_sweep_archives_a_dead_servers_dialog_without_force(tmp_path: Path) -> None:
    journal = Journal(tmp_path, instance="gone-1-abc")  # an owner whose lock nobody holds
    journal.append("orphan", "user", "hello")
    result = CliRunner().invoke(main, ["sweep", "--older-than", "0", "--data", str(tmp_path)])
    assert result.exit_code == 0 and "archived orphan" in result.stdout, result.output


def test_list_damaged_names_each_journal_moved_aside(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append("a", "user", "hello")
    path = journal.layout.current_path("a")
    path.write_bytes(path.read_bytes().replace(b"- seq: 1", b"- seq: x"))
    journal.append("a", "user", "fresh")  # moves the damaged one aside
    listed = CliRunner().invoke(main, ["list", "--damaged", "--data", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    (line,) = listed.stdout.splitlines()
    assert line.startswith("a\t") and ".damaged-" in line
    as_json = CliRunner().invoke(main, ["list", "--damaged", "--json", "--data", str(tmp_path)])
    assert json.loads(as_json.stdout)[0]["user"] == "a"
