from __future__ import annotations

import json
from pathlib import Path

import jwt
from click.testing import CliRunner

from archiver.cli import main
from archiver.journal import Journal


def archive_one(data: Path, user: str = "alice") -> str:
    journal = Journal(data, fsync="no")
    journal.append(user, "user", "Hello there")
    journal.append(user, "assistant", "A reply\nover two lines")
    archived = journal.archive(user, "disconnect")
    assert archived is not None
    return archived.name


def test_token_uses_the_generated_secret(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["token", "alice", "--admin", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    secret = (tmp_path / ".jwt-secret").read_text().strip()
    claims = jwt.decode(result.output.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["role"] == "admin"


def test_list_and_show(tmp_path: Path) -> None:
    name = archive_one(tmp_path)
    runner = CliRunner()
    listed = runner.invoke(main, ["list", "--data", str(tmp_path)])
    assert listed.exit_code == 0 and f"alice\t{name}\t" in listed.output
    as_json = json.loads(runner.invoke(main, ["list", "--json", "--data", str(tmp_path)]).output)
    assert as_json[0]["user"] == "alice" and as_json[0]["messages"] == 2
    shown = runner.invoke(main, ["show", "alice", name, "--data", str(tmp_path)])
    assert shown.exit_code == 0
    assert "#1 user" in shown.output and "    over two lines" in shown.output
    by_path = Journal(tmp_path).dialogs_dir("alice") / "archived" / name
    assert runner.invoke(main, ["show", str(by_path), "--json"]).exit_code == 0


def test_nothing_found_and_errors_have_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["list", "--data", str(tmp_path)]).exit_code == 1
    missing = runner.invoke(
        main, ["show", "alice", "2020-01-01-00-00-00.yaml", "--data", str(tmp_path)]
    )
    assert missing.exit_code == 1 and "no archive" in missing.output
    assert runner.invoke(main, ["list", "--bogus"]).exit_code == 2
