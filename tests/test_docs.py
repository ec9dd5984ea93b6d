"""The README's tables are checked against the code, so they cannot drift; and every link
between README.md and docs/ leads somewhere (the CLI reference is checked in test_cli.py)."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from archiver.config import Settings

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
FORMATTER_EVENTS = {"http.request", "uvicorn.log"}  # written by logs.py for other loggers


def _events_in_code() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "archiver").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func.value
            if not (isinstance(target, ast.Name) and target.id == "log" and node.args):
                continue
            first = node.args[0]
            options = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
            for option in options:
                assert isinstance(option, ast.Constant), f"{path}: event names are literals"
                found.add(option.value)
    return found


def _events_in_readme() -> set[str]:
    table = README.split("<!-- log-events -->")[1].split("<!-- /log-events -->")[0]
    return set(re.findall(r"^\| `([a-z_.]+)` \|", table, re.M))


def test_every_log_event_is_documented_and_every_documented_event_exists() -> None:
    assert _events_in_readme() == _events_in_code() | FORMATTER_EVENTS


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"^\| `(ARCHIVER_[A-Z_]+)` \|", README, re.M))
    fields = {"ARCHIVER_" + f.name.upper() for f in dataclasses.fields(Settings)}
    assert documented == fields


def test_ci_runs_the_readme_test_command() -> None:
    block = README.split("<!-- test-command -->")[1].split("<!-- /test-command -->")[0]
    assert "pytest" in block
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_link_between_the_docs_leads_somewhere() -> None:
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL outside the repository
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and anchor not in _anchors(file.read_text()):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_links_to_each_moved_document() -> None:
    for name in ("performance", "reliability", "deploying", "cli"):
        assert f"](docs/{name}.md" in README, name
