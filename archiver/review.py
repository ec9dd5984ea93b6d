"""Reading archives for people: listing across users, and transcripts on a terminal.

Shared by the CLI and the HTTP review routes. Listing reads only the header and the
tail of each file (journal.Journal.archive_info), never a whole transcript.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from .journal import ArchiveInfo, Dialog, Journal


def list_archives(journal: Journal, user: str | None = None) -> list[ArchiveInfo]:
    """Archives of ``user`` (or of everyone), newest first."""
    users = [user] if user is not None else journal.users()
    found: list[ArchiveInfo] = []
    for name in users:
        found.extend(journal.list_archives(name))
    return sorted(found, key=lambda info: (info.ended or "", info.name), reverse=True)


def find_archive(journal: Journal, user: str, name: str) -> Path | None:
    path = journal.archive_path(user, name)
    return path if path is not None and path.is_file() else None


def render(dialog: Dialog, width: int | None = None) -> str:
    """A transcript as a conversation: who, when, and the text wrapped and indented."""
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 100)
    lines = [f"dialog {dialog.dialog}  user {dialog.user}"]
    lines.append(f"started {dialog.started}")
    if dialog.ended:
        lines.append(f"ended   {dialog.ended}  ({dialog.reason})")
    lines.append("")
    for message in dialog.messages:
        flag = "  [interrupted]" if message.interrupted else ""
        lines.append(f"{message.at}  #{message.seq} {message.role}{flag}")
        for paragraph in message.text.split("\n"):
            wrapped = textwrap.wrap(
                paragraph, width=width - 4, replace_whitespace=False, drop_whitespace=False
            )
            lines.extend("    " + part for part in (wrapped or [""]))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
