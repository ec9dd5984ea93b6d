"""The exactly-once check the reliability tests share.

Every message that got a 2xx is in exactly one file, in order, right before its reply;
every file loads with PyYAML (YAML 1.1) and ruamel.yaml (1.2) alike; seq counts 1, 2, ...
in each file; nothing is in two files.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from archiver.layout import ARCHIVE_NAME, archive_sort_key, user_dir_name, user_from_dir_name

# What may exist under a data directory, and nothing else.
_USER_FILE = re.compile(
    r"\A(?:\.lock|current\.yaml|current\.yaml\.(?:torn|damaged)-\d{8}T\d{6}Z(?:-\d+)?"
    r"|archived/\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}(?:-[1-9]\d{0,5})?\.yaml)\Z"
)
# The search index (archiver/index.py) is derived data beside the users' directories.
_TOP_FILE = re.compile(
    r"\A(?:\.jwt-secret|\.ticket-secret|\.instances/[^/]+\.lock"
    r"|\.index/search\.sqlite3(?:-wal|-shm)?)\Z"
)


def load_both(path: Path) -> dict[str, Any]:
    """Load ``path`` with PyYAML and ruamel.yaml; both must read the same document."""
    text = path.read_text(encoding="utf-8")
    with_pyyaml = yaml.safe_load(text)
    with_ruamel = YAML(typ="safe", pure=True).load(io.StringIO(text))
    assert with_pyyaml == with_ruamel, f"{path}: YAML 1.1 and 1.2 loaders disagree"
    assert isinstance(with_pyyaml, dict), path
    return with_pyyaml


def dialog_files(users_dir: Path, user: str) -> list[Path]:
    """The user's archives, oldest first, then the live journal if there is one."""
    dialogs = users_dir / user_dir_name(user) / "dialogs"
    archived = dialogs / "archived"
    names = [p for p in archived.glob("*.yaml")] if archived.is_dir() else []
    files = sorted(names, key=lambda p: archive_sort_key(p.name))
    if (dialogs / "current.yaml").exists():
        files.append(dialogs / "current.yaml")
    return files


@dataclass
class Tally:
    files: int = 0
    messages: int = 0
    accepted: int = 0
    unacknowledged: int = 0  # questions on disk whose chat got no 2xx (allowed, once)
    reasons: Counter[str] = field(default_factory=Counter)


def check_exactly_once(
    users_dir: Path, user: str, accepted: list[tuple[str, str]], tally: Tally | None = None
) -> Tally:
    """``accepted``: (question, reply text) of every chat of ``user`` that got a 2xx, in order.

    Question texts must be unique per user (the tests make them so).
    """
    tally = tally or Tally()
    questions: list[str] = []
    where: dict[str, tuple[Path, int]] = {}
    docs: dict[Path, list[dict[str, Any]]] = {}
    for path in dialog_files(users_dir, user):
        doc = load_both(path)
        assert doc["user"] == user, path
        messages = doc.get("messages") or []
        assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1)), path
        if path.name != "current.yaml":
            assert ARCHIVE_NAME.match(path.name), path
            assert doc.get("ended") and doc.get("reason"), f"{path}: an archive has a trailer"
            tally.reasons[doc["reason"]] += 1
        else:
            assert "ended" not in doc, f"{path}: a live journal has no trailer"
        docs[path] = messages
        tally.files += 1
        tally.messages += len(messages)
        for i, m in enumerate(messages):
            assert m["role"] in ("user", "assistant", "error"), path
            if m["role"] == "user":
                questions.append(m["text"])
                where[m["text"]] = (path, i)
    twice = [text for text, n in Counter(questions).items() if n > 1]
    assert not twice, f"{user}: duplicated on disk: {twice[:5]}"
    asked = {q for q, _ in accepted}
    assert [q for q in questions if q in asked] == [q for q, _ in accepted], (
        f"{user}: acknowledged messages missing or out of order"
    )
    for question, reply in accepted:
        path, i = where[question]
        messages = docs[path]
        assert i + 1 < len(messages), f"{user}: {question!r} has no reply after it in {path}"
        after = messages[i + 1]
        assert (after["role"], after["text"]) == ("assistant", reply), (user, question, after)
    tally.accepted += len(accepted)
    tally.unacknowledged += len(questions) - len(accepted)
    return tally


def unloadable_archives(data: Path) -> list[str]:
    """Archives under ``data`` that PyYAML or ruamel.yaml cannot load as a dialog with at
    least one message: a damaged journal must never become an archive."""
    out = []
    for path in sorted(data.glob("users/*/dialogs/archived/*.yaml")):
        try:
            doc = load_both(path)
            assert doc.get("messages"), "no messages"
        except Exception as exc:  # any failure to load is what this reports
            out.append(f"{path.relative_to(data)}: {type(exc).__name__}")
    return out


def stray_files(data: Path) -> list[str]:
    """Files under ``data`` that none of the layout's rules allows (relative paths)."""
    out = []
    for path in sorted(data.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(data).as_posix()
        if _TOP_FILE.match(rel):
            continue
        parts = rel.split("/", 3)
        ok = (
            len(parts) >= 4
            and parts[0] == "users"
            and parts[2] == "dialogs"
            and user_dir_name(user_from_dir_name(parts[1])) == parts[1]
            and _USER_FILE.match(parts[3]) is not None
        )
        if not ok:
            out.append(rel)
    return out
