"""The layout: user ids to directory names, archive names, and the rule that no module but
archiver/layout.py spells a path component."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from archiver.layout import (
    ARCHIVED,
    CURRENT,
    DIALOGS,
    INDEX_DIR,
    INSTANCES,
    LOCK,
    SECRET_FILE,
    USERS,
    BadUserId,
    Layout,
    archive_names_for,
    archive_sort_key,
    file_kind,
    user_dir_name,
    user_from_dir_name,
)

PACKAGE = Path(__file__).parent.parent / "archiver"
# Components that are nothing but paths: spelt anywhere else, in any string, is a defect.
ONLY_PATHS = (CURRENT, LOCK, INSTANCES, SECRET_FILE, INDEX_DIR, DIALOGS, ".torn-", ".tmp-")
# Words that are also JSON keys and SSE event names ("archived", "users"): a defect only
# where a path is built from them.
PATH_WORDS = (USERS, ARCHIVED)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                out.add(id(value))
    return out


def _path_contexts(tree: ast.AST) -> set[int]:
    """Ids of string constants used to build or compare a path: ``x / "s"``, ``"s" / x``,
    ``os.path.join(..., "s")``, ``"/".join([... "s" ...])``, ``p.name == "s"``."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            out.update(id(side) for side in (node.left, node.right))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "join":
            for arg in node.args:
                out.add(id(arg))
                out.update(id(e) for e in getattr(arg, "elts", []))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(getattr(s, "attr", "") in ("name", "parts") for s in sides):
                out.update(id(s) for s in sides)
                for side in sides:
                    out.update(id(e) for e in getattr(side, "elts", []))
    return out


def spellings(source: str) -> list[tuple[int, str]]:
    """(line, literal) for each path component a module's code spells."""
    tree = ast.parse(source)
    docstrings, paths = _docstrings(tree), _path_contexts(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
            continue
        if id(node) in docstrings:
            continue
        text = node.value
        only_path = any(part in text for part in ONLY_PATHS if part != DIALOGS) or text == DIALOGS
        path_word = id(node) in paths and (text in PATH_WORDS or f"/{ARCHIVED}" in text)
        if only_path or path_word:
            found.append((node.lineno, text))
    return found


def test_no_module_but_layout_spells_a_path_component() -> None:
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "layout.py":
            continue
        for line, text in spellings(path.read_text()):
            # Help texts name current.yaml to the reader; they build no path.
            if text.endswith(")") or " " in text:
                continue
            offenders.append(f"{path.name}:{line}: {text!r}")
    assert offenders == [], "ask archiver/layout.py instead:\n" + "\n".join(offenders)


def test_the_check_catches_what_it_looks_for() -> None:
    code = 'p = base / "archived"\nq = "current.yaml"\nr = os.path.join(d, "users")\n'
    assert sorted(text for _, text in spellings(code)) == ["archived", "current.yaml", "users"]
    assert spellings('Event("archived", {"users": 1})\n') == []


def test_user_dir_names_are_reversible_and_safe() -> None:
    for user in ["a1", "auth0|42", ".", "..", "a/b", "%41", "ü"]:
        name = user_dir_name(user)
        assert "/" not in name and not name.startswith(".")
        assert user_from_dir_name(name) == user
    with pytest.raises(BadUserId):
        user_dir_name("")
    with pytest.raises(BadUserId):
        user_dir_name("x" * 300)


def test_archive_names_of_one_second_sort_in_order() -> None:
    names = archive_names_for(0.0)
    first = [next(names) for _ in range(3)]
    assert first == [
        "1970-01-01-00-00-00.yaml",
        "1970-01-01-00-00-00-2.yaml",
        "1970-01-01-00-00-00-3.yaml",
    ]
    assert sorted(reversed(first), key=archive_sort_key) == first


def test_paths_and_kinds(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    current = layout.current_path("a/b")
    assert current.relative_to(tmp_path).parts == (USERS, "a%2Fb", DIALOGS, CURRENT)
    archive = layout.archive_path("a/b", "2026-11-21-10-30-00.yaml")
    assert archive is not None and layout.archive_of(archive) == "a/b"
    assert layout.archive_path("a/b", "../x") is None
    assert file_kind(archive) == "archive" and file_kind(current) == "journal"
    assert file_kind(current.with_name(CURRENT + ".torn-1")) == "torn side file"
    assert layout.users() == [] and layout.archive_names("a/b") == []
