"""The dialog file format: the bytes of a journal or an archive, written and read back.

A dialog file is one YAML document that any YAML 1.2 (and 1.1) loader reads::

    user: a1
    dialog: d-20261121T103000Z-3f9a
    started: '2026-11-21T10:30:00.123Z'
    messages:
    - seq: 1
      role: user
      at: '2026-11-21T10:30:05.001Z'
      text: Hello!
    ended: '2026-11-21T10:35:00.000Z'     # the trailer: archives only
    reason: disconnect
    ...

**The commit marker.** A journal always ends with the YAML document-end line ``...``.
An append overwrites those four bytes with ``<entry>...\\n`` in one ``pwrite``, so the
file is at all times a complete YAML document, and a file that does *not* end with
``\\n...\\n`` was torn by a crash mid-write (:func:`tail_state`). Without the marker a cut
inside a multi-line message would still parse, silently truncated. :func:`torn_boundary`
says where the torn write began.

**Reading from the ends.** Entry lines are the only ones at column 0 that start with
``- ``, so the last entry is found by a reverse search of the tail, grown only while it
holds none (:func:`grow_tail`); the header is the first few lines. Nothing on a hot path
parses a whole dialog.

Scalars are written and read by :mod:`archiver.yamltext`; this module composes them into
the dialog's shape. It is the only place that knows that shape: the journal, archives,
export and search all read and write through it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from . import yamltext
from .errors import JournalError
from .fsops import pread_tail

if TYPE_CHECKING:
    from .redact import Redactor

# Divergence #9: append by overwriting the document-end marker in place (one pwrite),
# never by loading and dumping the YAML document.
MARKER = b"...\n"
TAIL_OK = b"\n...\n"
REASONS = ("disconnect", "timeout", "shutdown", "recovery", "user")
ROLES = ("user", "assistant", "error")
OPTIONAL = ("key", "upstream", "first_token_ms")  # entry fields after ``interrupted``
TAIL_READ = 4096  # the first read of a tail: a few entries
HEAD_READ = 4096  # the header: a few short lines, the user id at most ~1 KB escaped
ENTRY_START = b"- seq: "  # every entry starts with this line, at column 0
COLUMN0 = re.compile(rb"\n(?=[^ \n])")  # a line start at column 0 (not indented, not blank)
_TRAILER = re.compile(rb"\nended: '([^'\n]*)'\nreason: ([^\n]*)\n")
_TRAILER_WINDOW = 256  # a journal's trailer is the last ~70 bytes before the marker
_HEAD_LINE = re.compile(rb"^(user|dialog|started): (.*)$", re.M)
_SEQ = b"\n" + ENTRY_START
_AT = b"\n  at: '"
_ENTRY_HEAD = re.compile(
    r"- seq: (\d+)\n  role: (user|assistant|error)\n  at: '([^'\n]*)'\n  text: "
)


# ---------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class Message:
    seq: int
    role: str
    at: str
    text: str
    interrupted: bool = False
    # The client's Idempotency-Key of a user message (POST /chat), recorded so a repeat
    # is recognized across restarts and after the dialog is archived.
    key: str | None = None
    # Which upstream (ARCHIVER_UPSTREAM: echo, openai, n8n) wrote an assistant or
    # error entry, and ms from the question being journaled to the first streamed chunk
    # (floored, so never above the entries' own ``at`` difference). Absent in archives
    # written before they were recorded: every reader takes them as optional.
    upstream: str | None = None
    first_token_ms: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "role": self.role, "at": self.at}
        out["text"] = self.text
        if self.interrupted:
            out["interrupted"] = True
        for name in OPTIONAL:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class Dialog:
    user: str
    dialog: str
    started: str
    messages: list[Message]
    ended: str | None = None
    reason: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user, "dialog": self.dialog}
        out["started"] = self.started
        if self.ended is not None:
            out["ended"] = self.ended
            out["reason"] = self.reason
        out["messages"] = [m.as_json() for m in self.messages]
        return out

    def after(self, seq: int) -> Dialog:
        """This dialog with only the messages after ``seq``."""
        return Dialog(
            user=self.user,
            dialog=self.dialog,
            started=self.started,
            messages=[m for m in self.messages if m.seq > seq],
            ended=self.ended,
            reason=self.reason,
        )


@dataclass(frozen=True)
class Summary:
    """What the ends of a dialog file tell: the header, the last message, the trailer."""

    user: str
    dialog: str
    started: str
    messages: int
    last_at: str | None
    ended: str | None = None
    reason: str | None = None


def utc_stamp(now: float | None = None) -> str:
    """``2026-11-21T10:30:05.420Z``: milliseconds, UTC, always quoted in YAML."""
    now = time.time() if now is None else now
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}Z"


def new_dialog_id(now: float | None = None) -> str:
    now = time.time() if now is None else now
    return "d-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(3)


# ---------------------------------------------------------------------------------------
# Writing


def header_text(user: str, dialog: str, started: str) -> str:
    return (
        f"user: {yamltext.inline(user)}\n"
        f"dialog: {yamltext.inline(dialog)}\n"
        f"started: {yamltext.quoted(started)}\n"
        "messages:\n"
    )


def message_text(message: Message) -> str:
    fields = [
        ("seq", str(message.seq)),
        ("role", yamltext.inline(message.role)),
        ("at", yamltext.quoted(message.at)),
        ("text", yamltext.scalar(message.text, 2)),
    ]
    if message.interrupted:
        fields.append(("interrupted", "true"))
    if message.key is not None:
        fields.append(("key", yamltext.inline(message.key)))
    if message.upstream is not None:
        fields.append(("upstream", yamltext.inline(message.upstream)))
    if message.first_token_ms is not None:
        fields.append(("first_token_ms", str(message.first_token_ms)))
    return yamltext.entry_text(fields)


def trailer_text(ended: str, reason: str, redaction: dict[str, int] | str | None = None) -> str:
    text = f"ended: {yamltext.quoted(ended)}\nreason: {yamltext.inline(reason)}\n"
    if redaction is not None:
        # Which patterns ran, and how many spans each replaced: "email=2, card=0" (or that
        # summary as read back from an archive, by an import).
        summary = (
            redaction
            if isinstance(redaction, str)
            else ", ".join(f"{name}={count}" for name, count in redaction.items())
        )
        text += f"redacted: {yamltext.inline(summary or 'none')}\n"
    return text


ARCHIVE_EXTRA = ("redacted",)  # header and trailer fields an archive may carry beyond these


def archive_bytes(dialog: Dialog) -> bytes:
    """The bytes the journal writes for ``dialog`` once archived: what ``archiver import``
    writes back, identical to the original for every archive the journal wrote."""
    if dialog.ended is None or dialog.reason is None:
        raise ValueError("an archive needs its ended time and reason")
    parts = [header_text(dialog.user, dialog.dialog, dialog.started)]
    parts += [message_text(message) for message in dialog.messages]
    parts.append(trailer_text(dialog.ended, dialog.reason, dialog.extra.get("redacted")))
    return "".join(parts).encode("utf-8") + MARKER


def trailer_bytes(reason: str, ended: str | None = None) -> bytes:
    """What archiving writes over a journal's marker: the trailer, then the marker again."""
    return trailer_text(ended or utc_stamp(), reason).encode() + MARKER


def redacted_copy(data: bytes, redactor: Redactor) -> bytes:
    """The bytes of ``data``'s archive with every message text redacted, and a trailer
    that says which patterns ran and how often each matched."""
    dialog = parse_dialog(data)
    totals: dict[str, int] = dict.fromkeys(redactor.names, 0)
    parts = [header_text(dialog.user, dialog.dialog, dialog.started)]
    for message in dialog.messages:
        text, found = redactor.redact(message.text)
        for name, count in found.items():
            totals[name] += count
        parts.append(message_text(dataclasses.replace(message, text=text)))
    parts.append(trailer_text(dialog.ended or utc_stamp(), dialog.reason or "recovery", totals))
    return "".join(parts).encode("utf-8") + MARKER


# ---------------------------------------------------------------------------------------
# The ends of a file


TailState = Literal["clean", "pending", "torn"]


def tail_state(tail: bytes) -> TailState:
    """``clean``: ends in the marker, no trailer (appendable); ``pending``: a trailer was
    written and the rename not done (a crash between them); ``torn``: a write was cut."""
    if not tail.endswith(TAIL_OK):
        return "torn"
    return "pending" if _TRAILER.search(tail[-_TRAILER_WINDOW:]) else "clean"


def trailer_in(tail: bytes) -> tuple[str, str] | None:
    """(ended, reason) of the trailer in ``tail``, if it holds one."""
    found = _TRAILER.search(tail)
    return None if found is None else (found.group(1).decode(), found.group(2).decode())


def grow_tail(
    fd: int, size: int, enough: Callable[[bytes], bool], tail: bytes | None = None
) -> bytes:
    """The shortest tail (``TAIL_READ`` bytes, then 4x each time) for which ``enough``
    holds, or the whole file; ``tail`` is one already read from the end."""
    tail = pread_tail(fd, size, TAIL_READ) if tail is None else tail
    want = max(len(tail), 1)
    while not enough(tail) and want < size:
        want *= 4
        tail = pread_tail(fd, size, want)
    return tail


def last_seq_and_at(tail: bytes) -> tuple[int, str | None] | None:
    """The last ``- seq: N`` (and its ``at``) in ``tail``, or None if the tail holds none."""
    pos = tail.rfind(_SEQ)
    if pos < 0:
        if not tail.startswith(ENTRY_START):
            return None
        pos = -1
    start = pos + len(_SEQ)
    end = tail.find(b"\n", start)
    if end < 0:
        return None
    seq = int(tail[start:end])
    at_pos = tail.find(_AT, end)
    at = None
    if at_pos >= 0:
        at_end = tail.find(b"'", at_pos + len(_AT))
        at = tail[at_pos + len(_AT) : at_end].decode() if at_end > 0 else None
    return seq, at


def last_seq(fd: int, size: int, tail: bytes) -> int:
    """The seq of a journal's last entry (JournalError ``corrupt`` if there is none)."""
    try:
        tail = grow_tail(fd, size, lambda t: last_seq_and_at(t) is not None, tail)
        found = last_seq_and_at(tail)
    except ValueError as exc:
        detail = f"the journal's last entry is damaged ({exc})"[:300]
        raise JournalError("corrupt", detail) from None
    if found is None:
        raise JournalError("corrupt", "the journal has a header but no message")
    return found[0]


def dialog_id_in(head: bytes) -> str:
    """The ``dialog:`` value of a file that starts with ``head``."""
    start = head.find(b"\ndialog: ")
    end = head.find(b"\n", start + 1)
    if start < 0 or end < 0:
        raise yamltext.ParseError("no dialog id in the header")
    return yamltext.parse_value(head[start + 9 : end].decode("utf-8"), [], 0, 0)[0]


def dialog_id_of(fd: int) -> str:
    try:
        return dialog_id_in(os.pread(fd, HEAD_READ, 0))
    except yamltext.ParseError:
        raise JournalError("corrupt", "the journal has no dialog id in its header") from None


def parse_head(head: bytes) -> dict[str, str]:
    end = head.find(b"\nmessages:\n")
    region = head if end < 0 else head[:end]
    out = {}
    for match in _HEAD_LINE.finditer(region):
        value = match.group(2).decode("utf-8", "replace")
        out[match.group(1).decode()] = yamltext.parse_value(value, [], 0, 0)[0]
    return out


def summary_of(fd: int, tail: bytes | None = None, name: str = "the file") -> Summary:
    """The :class:`Summary` of an open dialog file, from its two ends."""
    try:
        size = os.fstat(fd).st_size
        tail = grow_tail(fd, size, lambda t: last_seq_and_at(t) is not None, tail)
        found = last_seq_and_at(tail)
        top = parse_head(os.pread(fd, HEAD_READ, 0))
    except ValueError as exc:  # a seq that is no number, a header that is no UTF-8, ...
        raise JournalError("corrupt", f"{name} is damaged ({exc})"[:300]) from None
    trailer = trailer_in(tail)
    return Summary(
        user=top.get("user", ""),
        dialog=top.get("dialog", ""),
        started=top.get("started", ""),
        messages=found[0] if found else 0,
        last_at=found[1] if found else None,
        ended=trailer[0] if trailer else None,
        reason=trailer[1] if trailer else None,
    )


def read_summary(path: os.PathLike[str] | str) -> Summary:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return summary_of(fd, name=os.path.basename(path))
    finally:
        os.close(fd)


def tail_messages(fd: int, size: int, count: int) -> list[Message] | None:
    """The last ``count`` messages, parsed from the tail; None if the tail is not in our
    shape (the caller then parses the whole file)."""
    if count <= 0:
        return []

    def starts(tail: bytes) -> list[int]:
        return [m.start() + 1 for m in re.finditer(re.escape(_SEQ), tail)]

    tail = grow_tail(fd, size, lambda t: len(starts(t)) > count, pread_tail(fd, size, 16384))
    found = starts(tail)
    if not found:
        return []
    chunk = tail[found[-count] if len(found) >= count else found[0] :].decode("utf-8")
    try:
        _, entries = yamltext.parse_document(chunk)
        return [message_from_fields(e) for e in entries]
    except yamltext.ParseError:
        return None


# ---------------------------------------------------------------------------------------
# Torn writes


def torn_boundary(data: bytes) -> int:
    """How many leading bytes of a torn journal are whole; the rest is the torn write.

    Every write starts at a line start, at column 0: the header together with the first
    entry, then ``- seq:`` for each entry, ``ended:`` for the trailer. Every other line of
    a record is indented, except the header's keys and the trailer's ``reason:``. So the
    torn write began at the last column-0 line after the first entry that is not a
    trailer continuation; if there is none, the first write itself was torn.
    """
    starts = [m.end() for m in COLUMN0.finditer(data)]
    records = [0]
    first_entry_seen = data.startswith(ENTRY_START)
    for pos in starts:
        if not first_entry_seen:
            first_entry_seen = data.startswith(ENTRY_START, pos)
            continue  # header lines and the first entry were written together
        if data.startswith(b"reason:", pos) and data.startswith(b"ended:", records[-1]):
            continue
        records.append(pos)
    return records[-1]


def complete_part(data: bytes) -> bytes:
    """A journal's bytes up to its last complete entry (all of it unless torn or mid-write)."""
    if not data or data.endswith(TAIL_OK):
        return data
    return data[: torn_boundary(data)]


# ---------------------------------------------------------------------------------------
# Reading a whole file, or one entry


def message_from_fields(fields: dict[str, str]) -> Message:
    try:
        return Message(
            seq=int(fields["seq"]),
            role=fields["role"],
            at=fields["at"],
            text=fields.get("text", ""),
            interrupted=fields.get("interrupted") == "true",
            key=fields.get("key"),
            upstream=fields.get("upstream"),
            first_token_ms=_optional_int(fields.get("first_token_ms")),
        )
    except (KeyError, ValueError) as exc:
        raise yamltext.ParseError(f"entry without a valid {exc}") from None


def _optional_int(value: object) -> int | None:
    return None if value is None else int(str(value))


def parse_entry(entry: bytes) -> Message:
    """One entry, in the exact shape :func:`message_text` writes (the four fields in
    their order, then maybe ``interrupted`` and the :data:`OPTIONAL` ones: only the text
    needs a YAML reader), or else read generically."""
    message = _exact_entry(entry, whole=False)
    return _entry_of_fields(entry.decode("utf-8")) if message is None else message


def _entry_of_fields(text: str) -> Message:
    fields, _ = yamltext.parse_mapping_lines(yamltext.split_lines(text), 0, 2)
    return message_from_fields(fields)


def entry_offsets(data: bytes, count: int) -> list[tuple[int, int]] | None:
    """(offset, length) of each message entry in a file in our shape (entries are the
    lines from a column-0 ``- `` to the next column-0 line); None if the file has
    another shape (then a hit reads the whole file)."""
    start = data.find(b"\nmessages:\n")
    if start < 0:
        return None
    pos = start + len(b"\nmessages:\n")
    out: list[tuple[int, int]] = []
    while data.startswith(b"- ", pos):
        end = pos
        while True:
            newline = data.find(b"\n", end)
            if newline < 0:
                end = len(data)
                break
            end = newline + 1
            if end >= len(data) or data[end : end + 1] not in (b" ", b"\n"):
                break
        out.append((pos, end - pos))
        pos = end
    return out if len(out) == count else None


def read_with_offsets(data: bytes) -> tuple[Dialog, list[tuple[int, int]] | None]:
    """:func:`parse_dialog` and :func:`entry_offsets` in one pass (what an index build
    reads for every archive): each entry in the exact shape :func:`message_text` writes
    is read on its own, the header and trailer lines by the generic reader. A file in
    any other shape is read by :func:`parse_dialog` (the same Dialog either way)."""
    fast = _read_entries(data)
    if fast is not None:
        return fast
    dialog = parse_dialog(data)
    return dialog, entry_offsets(data, len(dialog.messages))


def _read_entries(data: bytes) -> tuple[Dialog, list[tuple[int, int]]] | None:
    starts = [0, *(m.end() for m in COLUMN0.finditer(data)), len(data)]
    entries = [i for i in range(len(starts) - 1) if data.startswith(ENTRY_START, starts[i])]
    if not entries or entries[-1] - entries[0] != len(entries) - 1:
        return None  # no entries, or lines between them: not ours
    first, after = starts[entries[0]], starts[entries[-1] + 1]
    if data.rfind(b"\n- ", after) >= 0 or not data.endswith(b"\nmessages:\n", 0, first):
        return None  # entry_offsets wants the entries right after "messages:"
    messages: list[Message] = []
    try:
        top, more = yamltext.parse_document((data[:first] + data[after:]).decode("utf-8"))
        for i in entries:
            message = _exact_entry(data[starts[i] : starts[i + 1]])
            if message is None:
                return None
            messages.append(message)
    except (yamltext.ParseError, UnicodeDecodeError):
        return None
    if more or "messages" in top:
        return None
    offsets = [(starts[i], starts[i + 1] - starts[i]) for i in entries]
    return _dialog_from(top, messages), offsets


def _exact_entry(entry: bytes, whole: bool = True) -> Message | None:
    """One entry exactly as :func:`message_text` writes it (``whole``: with its final
    newline), else None."""
    text = entry.decode("utf-8")
    head = _ENTRY_HEAD.match(text)
    if head is None:
        return None
    lines = yamltext.split_lines(text[head.end() - 8 :])
    value, end = yamltext.parse_value(lines[0][8:], lines, 1, 2)
    rest = lines[end:]
    interrupted = bool(rest) and rest[0] == "  interrupted: true"
    rest = rest[1:] if interrupted else rest
    found: dict[str, str] = {}
    for name in OPTIONAL:
        if rest and rest[0].startswith(f"  {name}: "):
            found[name] = yamltext.parse_value(rest[0][len(name) + 4 :], [], 0, 0)[0]
            rest = rest[1:]
    if rest or (whole and not text.endswith("\n")):
        return None
    if not found.get("first_token_ms", "0").isdigit():
        return None
    key, upstream = found.get("key"), found.get("upstream")
    first = _optional_int(found.get("first_token_ms"))
    return Message(int(head[1]), head[2], head[3], value, interrupted, key, upstream, first)


def has_our_header(data: bytes) -> bool:
    """Whether ``data`` starts like a file we wrote (entries can be read one by one)."""
    return data.find(b"\nmessages:\n", 0, 8192) >= 0


def parse_dialog(data: bytes) -> Dialog:
    """Parse a journal or archive; fall back to ruamel.yaml for a file we did not write."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JournalError("corrupt", f"not UTF-8 text: {exc}") from None
    try:
        top, entries = yamltext.parse_document(text)
        messages = [message_from_fields(e) for e in entries]
    except yamltext.ParseError:
        return _parse_with_ruamel(text)
    return _dialog_from(top, messages)


def _dialog_from(top: dict[str, Any], messages: list[Message]) -> Dialog:
    known = {"user", "dialog", "started", "ended", "reason"}
    return Dialog(
        user=str(top.get("user", "")),
        dialog=str(top.get("dialog", "")),
        started=str(top.get("started", "")),
        messages=messages,
        ended=None if top.get("ended") is None else str(top["ended"]),
        reason=None if top.get("reason") is None else str(top["reason"]),
        extra={k: str(v) for k, v in top.items() if k not in known and k != "messages"},
    )


def _parse_with_ruamel(text: str) -> Dialog:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise JournalError("corrupt", f"not a valid YAML document: {exc}") from None
    if not isinstance(doc, dict):
        raise JournalError("corrupt", "not a dialog document")
    raw = doc.get("messages") or []
    try:
        messages = [
            Message(
                seq=int(m["seq"]),
                role=str(m["role"]),
                at=str(m["at"]),
                text=str(m.get("text", "")),
                interrupted=bool(m.get("interrupted", False)),
                key=None if m.get("key") is None else str(m["key"]),
                upstream=None if m.get("upstream") is None else str(m["upstream"]),
                first_token_ms=_optional_int(m.get("first_token_ms")),
            )
            for m in raw
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise JournalError("corrupt", f"a message entry is malformed: {exc}") from None
    return _dialog_from(doc, messages)
