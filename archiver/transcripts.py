"""Archives in forms for people and spreadsheets: CSV rows, Markdown and HTML transcripts.

Used by ``archiver export --format csv|md|html`` and by ``GET /archives/{name}`` with
``Accept: text/markdown`` or ``text/html`` (the review page's "Download Markdown"), so the
server imports it: it imports nothing that forks or draws on a terminal.

* **CSV** follows RFC 4180 (the ``csv`` module: CRLF line ends, a field quoted when it
  holds a comma, a quote or a line break, quotes doubled), a header row, one row per
  dialog. Cells are written as they are: a spreadsheet that evaluates a cell starting with
  ``=`` does so on its own account (the data is not altered to prevent it).
* **Markdown** puts each message's text in a fenced block, longer than any run of
  backticks in the text, so nothing a user typed becomes markup (or HTML) when rendered.
* **HTML** is one self-contained document: inline CSS, no script, no external resource
  (its Content-Security-Policy forbids them), every text HTML-escaped, and a print style
  that starts each dialog on a new page.
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .dialogfile import Dialog, Message

FORMATS = ("jsonl", "csv", "md", "html")
CSV_HEADER = (
    "user",
    "dialog",
    "archive",
    "started",
    "ended",
    "reason",
    "messages",
    "user_messages",
    "assistant_messages",
    "error_messages",
    "first_user_message",
)
_BACKTICKS = re.compile(r"`+")


@dataclass(frozen=True)
class Transcript:
    """One archived dialog and where it lives (the user is the directory's)."""

    user: str
    name: str
    dialog: Dialog


# ---------------------------------------------------------------------------------------
# CSV


def csv_row(item: Transcript) -> list[str]:
    messages = item.dialog.messages
    counts = {role: sum(1 for m in messages if m.role == role) for role in _ROLES}
    first = next((m.text for m in messages if m.role == "user"), "")
    return [
        item.user,
        item.dialog.dialog,
        item.name,
        item.dialog.started,
        item.dialog.ended or "",
        item.dialog.reason or "",
        str(len(messages)),
        *(str(counts[role]) for role in _ROLES),
        first,
    ]


_ROLES = ("user", "assistant", "error")


def csv_lines(items: Iterable[Transcript]) -> Iterator[str]:
    """The header, then one CSV record per dialog, each with its CRLF."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in _with_header(items):
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def _with_header(items: Iterable[Transcript]) -> Iterator[list[str] | tuple[str, ...]]:
    yield CSV_HEADER
    for item in items:
        yield csv_row(item)


# ---------------------------------------------------------------------------------------
# Markdown


def _when(stamp: str | None) -> str:
    """``2026-11-21T10:30:05.420Z`` as ``2026-11-21 10:30:05 UTC`` (what a reader wants)."""
    if not stamp:
        return "—"
    return stamp[:10] + " " + stamp[11:19] + " UTC" if len(stamp) >= 19 else stamp


def _fence(text: str) -> str:
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    return "`" * max(3, longest + 1)


def markdown(item: Transcript) -> str:
    """One dialog as a Markdown document."""
    d = item.dialog
    ended = _when(d.ended) + (f" ({d.reason})" if d.reason else "")
    lines = [
        f"# Dialog {_md_inline(d.dialog)}",
        "",
        f"- **User:** {_md_inline(item.user)}",
        f"- **Archive:** {_md_inline(item.name)}",
        f"- **Started:** {_when(d.started)}",
        f"- **Ended:** {ended}",
        f"- **Messages:** {len(d.messages)}",
        "",
    ]
    for message in d.messages:
        lines += _md_message(message)
    return "\n".join(lines)


def _md_message(message: Message) -> list[str]:
    fence = _fence(message.text)
    note = " (interrupted)" if message.interrupted else ""
    return [
        f"## {message.seq}. {message.role} · {_when(message.at)}{note}",
        "",
        f"{fence}text",
        message.text,
        fence,
        "",
    ]


def _md_inline(text: str) -> str:
    """An id or name in a heading or list item: code span, so no character is markup."""
    fence = "`" * (max((len(r) for r in _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_all(items: Iterable[Transcript]) -> Iterator[str]:
    """Dialogs one after another, a rule between two."""
    for n, item in enumerate(items):
        yield ("\n---\n\n" if n else "") + markdown(item)


# ---------------------------------------------------------------------------------------
# HTML

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; color: #111; max-width: 46rem; margin: 2rem auto;
  padding: 0 1rem; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; word-break: break-all; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0 1rem; margin: 0 0 1.2rem;
  color: #444; }
dt { font-weight: 600; } dd { margin: 0; word-break: break-all; }
.message { border-left: 4px solid #bbb; padding: .2rem 0 .2rem .8rem; margin: 0 0 .9rem;
  break-inside: avoid; }
.message.user { border-color: #2563eb; } .message.assistant { border-color: #16a34a; }
.message.error { border-color: #dc2626; }
.meta { font-size: .8rem; color: #555; margin: 0; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; margin: .2rem 0 0; }
article + article { border-top: 1px solid #ccc; margin-top: 2rem; padding-top: 1rem; }
@media print {
  body { margin: 0; max-width: none; font-size: 11pt; }
  article + article { break-before: page; border: 0; margin: 0; padding: 0; }
}
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def html_document(items: Iterable[Transcript], title: str = "Transcripts") -> Iterator[str]:
    """A whole HTML document, in pieces (a large export is never held in memory)."""
    yield (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
    )
    for item in items:
        yield html_article(item)
    yield "</body>\n</html>\n"


def html_article(item: Transcript) -> str:
    d = item.dialog
    e = html.escape
    ended = _when(d.ended) + (f" ({d.reason})" if d.reason else "")
    rows = [
        ("User", item.user),
        ("Archive", item.name),
        ("Started", _when(d.started)),
        ("Ended", ended),
        ("Messages", str(len(d.messages))),
    ]
    parts = [f"<article>\n<h1>Dialog {e(d.dialog)}</h1>\n<dl>"]
    parts += [f"<dt>{k}</dt><dd>{e(v)}</dd>" for k, v in rows]
    parts.append("</dl>")
    for m in d.messages:
        note = " · interrupted" if m.interrupted else ""
        parts.append(
            f'<section class="message {e(m.role)}" id="m{m.seq}">'
            f'<p class="meta">#{m.seq} {e(m.role)} · {e(_when(m.at))}{note}</p>'
            f'<p class="text">{e(m.text)}</p></section>'
        )
    parts.append("</article>\n")
    return "\n".join(parts)
