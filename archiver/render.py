"""Archives and search hits rendered for a terminal: the CLI's alone (the server never
imports this module; a test checks ``sys.modules``).

Every text from a transcript goes through :func:`printable` first, so a message cannot
drive the terminal it is shown on.
"""

from __future__ import annotations

import shutil
import textwrap
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .archives import plural
from .dialogfile import Dialog

if TYPE_CHECKING:
    from .query import Hit

Style = Callable[..., str]


def _plain(text: str, **_: Any) -> str:
    return text


def printable(text: str) -> str:
    """``text`` with control and format characters escaped, so it cannot drive a terminal."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif unicodedata.category(ch) == "Zs":
            out.append(" ")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def short_time(stamp: str, day: str | None = None) -> str:
    """``2026-11-21T10:30:05.420Z`` as ``2026-11-21 10:30:05``, or ``10:30:05`` on ``day``."""
    if len(stamp) < 19 or stamp[10] != "T":
        return stamp
    if day is not None and stamp[:10] == day:
        return stamp[11:19]
    return stamp[:10] + " " + stamp[11:19]


def terminal_width(default: int = 100) -> int:
    # shutil's, not os's: a terminal that reports 0 columns (under `script`, some CI
    # runners) or none at all falls back to COLUMNS, then to the default.
    return shutil.get_terminal_size((default, 24)).columns


ROLE_COLORS = {"user": "cyan", "assistant": "green", "error": "red"}


def render(dialog: Dialog, width: int | None = None, style: Style = _plain) -> str:
    """A transcript as a conversation: who, when, and the text wrapped and indented.

    ``style`` is :func:`click.style` for colour (click strips it when not on a terminal).
    """
    width = width or min(terminal_width(), 100)
    title = f"dialog {dialog.dialog}  user {printable(dialog.user)}"
    lines = [style(title, bold=True)]
    span = f"started {short_time(dialog.started)} UTC"
    if dialog.ended:
        span += f"  ended {short_time(dialog.ended)} UTC ({dialog.reason})"
    lines.append(f"{span}  {plural(len(dialog.messages), 'message')}")
    lines.append("")
    day = dialog.started[:10]
    for message in dialog.messages:
        flag = style("  [interrupted]", fg="yellow") if message.interrupted else ""
        when = style(short_time(message.at, day), dim=True)
        day = message.at[:10]
        role = style(message.role, fg=ROLE_COLORS.get(message.role), bold=True)
        lines.append(f"{when}  #{message.seq} {role}{flag}")
        lines.extend(_wrapped(printable_lines(message.text), width - 4, "    "))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def printable_lines(text: str) -> list[str]:
    return [printable(line) for line in text.split("\n")]


def _wrapped(lines: list[str], width: int, indent: str) -> list[str]:
    out: list[str] = []
    for line in lines:
        parts = textwrap.wrap(line, width=max(width, 20), replace_whitespace=False)
        out.extend(indent + part for part in (parts or [""]))
    return out


EXCERPT = 160  # longest matching line shown whole; longer ones are cut around the match


def hit_lines(hit: Hit, style: Style = _plain) -> list[str]:
    """One line per matching line of the message: where it is, then the line, highlighted."""
    where = (
        style(printable(hit.user), fg="magenta")
        + "  "
        + style(hit.archive, fg="blue")
        + f"  #{hit.message.seq} "
        + style(hit.message.role, fg=ROLE_COLORS.get(hit.message.role))
    )
    out = []
    line_start = 0
    for line in hit.message.text.split("\n"):
        line_end = line_start + len(line)
        spans = [
            (max(s, line_start) - line_start, min(e, line_end) - line_start)
            for s, e in hit.spans
            if s < line_end and e > line_start
        ]
        if spans:
            out.append(f"{where}  {_highlight(line, spans, style)}")
        line_start = line_end + 1
    return out or [where]


def _highlight(line: str, spans: list[tuple[int, int]], style: Style) -> str:
    lo, hi = 0, len(line)
    if len(line) > EXCERPT:
        lo = max(0, spans[0][0] - EXCERPT // 3)
        hi = min(len(line), lo + EXCERPT)
    pieces = ["…" if lo > 0 else ""]
    pos = lo
    for start, end in spans:
        start, end = max(start, pos), min(end, hi)
        if start >= end:
            continue
        pieces.append(printable(line[pos:start]))
        pieces.append(style(printable(line[start:end]), fg="red", bold=True))
        pos = end
    pieces.append(printable(line[pos:hi]))
    pieces.append("…" if hi < len(line) else "")
    return "".join(pieces)
