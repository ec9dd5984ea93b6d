"""The YAML text of one journal entry: a tiny emitter and its exact inverse.

Why not ruamel.yaml's dumper on the hot path: it is pure Python and costs ~345 µs to dump
one ~200-byte entry, and loading a 1,000-message journal takes ~450 ms. Our entries have
a fixed shape (an int, a few known words, a timestamp, and one arbitrary text), so the only
hard part is the text scalar. :func:`scalar` picks, in this order:

* **plain** when the text cannot be mistaken for anything else by a YAML 1.1 *or* 1.2
  loader (starts with a letter; no ``: ``, `` #``, tabs, control characters; not a
  1.1 boolean/null word such as ``no``, ``on``, ``y``);
* **literal block** (``|``, ``|-``, ``|+``, with an indentation indicator when the
  first line starts with a space) for multi-line text, so a transcript reads well, unless
  a line ends in a space or tab (yamllint, and editors that trim whitespace);
* **single-quoted** for other one-line printable text;
* **double-quoted** with escapes for anything else (control characters, ``\\r``,
  Unicode line separators, a BOM, whitespace-only multi-line text, trailing blanks).

Non-ASCII printable text is written as itself. Nothing is ever folded: one message line is
one file line, so ``grep`` finds a phrase. The output is checked against both ruamel.yaml
and PyYAML by a property test over arbitrary text (tests/test_yamltext.py).

:func:`parse_document` reads back what we write without a YAML library (it is ~50x faster
than ruamel.yaml); the journal falls back to ruamel.yaml for a file we did not write.
"""

from __future__ import annotations

import re

# Characters YAML allows unescaped, minus the ones YAML 1.1 treats as line breaks (NEL,
# LS, PS) and the BOM. Tab and newline are handled by each style separately.
_UNPRINTABLE = re.compile(
    "[^\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
_YAML11_WORDS = frozenset(
    ["y", "n", "yes", "no", "on", "off", "true", "false", "null"]
)  # compared lower-cased: covers Yes/YES/True/NULL too
_DQ_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\0": "\\0",
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
    "\x1b": "\\e",
    "\x85": "\\N",
    "\u2028": "\\L",
    "\u2029": "\\P",
}


def is_plain_safe(text: str) -> bool:
    if not text or not text[0].isalpha() or text[-1] in " :":
        return False
    if ": " in text or " #" in text or "\t" in text or "\n" in text:
        return False
    if text.lower() in _YAML11_WORDS:
        return False
    return _UNPRINTABLE.search(text) is None


_TRAILING_BLANK = re.compile(r"[ \t]$", re.MULTILINE)


def _literal_safe(text: str) -> bool:
    if "\n" not in text or not text.strip():
        return False
    # A line ending in a space or tab (Markdown's hard break, common in model replies)
    # is exact in a literal block, but linters (yamllint) report it and editors that trim
    # whitespace would silently change the message: such a text is double-quoted instead.
    if _TRAILING_BLANK.search(text):
        return False
    # Tabs are fine inside a literal block; other unprintables and CR are not.
    return _UNPRINTABLE.search(text.replace("\t", " ").replace("\n", " ")) is None


def _double_quoted(text: str) -> str:
    out = []
    for ch in text:
        esc = _DQ_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif _UNPRINTABLE.match(ch):
            code = ord(ch)
            if code <= 0xFF:
                out.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _literal(text: str, indent: int) -> str:
    """A literal block scalar whose content sits at column ``indent + 2``."""
    if text.endswith("\n\n") or text == "\n":
        chomp = "+"
    elif text.endswith("\n"):
        chomp = ""
    else:
        chomp = "-"
    body = text[:-1] if text.endswith("\n") else text
    lines = body.split("\n")
    first = next((line for line in lines if line), "")
    # An explicit indentation indicator when the content itself starts with a space,
    # otherwise a loader would take that space as indentation.
    indicator = "2" if first.startswith(" ") else ""
    pad = " " * (indent + 2)
    content = "\n".join(pad + line if line else "" for line in lines)
    return f"|{indicator}{chomp}\n{content}"


# Divergence #2: our own YAML scalar emitter (and its inverse, parse_document) instead of
# ruamel.yaml on the hot path: ~345 us a dump there, a few us here.
def scalar(text: str, indent: int = 0) -> str:
    """YAML for ``text`` as a mapping value whose key sits at column ``indent``.

    The result starts on the key's line; a literal block continues on following lines.
    """
    if is_plain_safe(text):
        return text
    if _literal_safe(text):
        return _literal(text, indent)
    if "\n" not in text and "\t" not in text and _UNPRINTABLE.search(text) is None:
        return "'" + text.replace("'", "''") + "'"
    return _double_quoted(text)


def inline(text: str) -> str:
    """Like :func:`scalar`, but always on one line (for header values)."""
    if is_plain_safe(text):
        return text
    if "\n" not in text and "\t" not in text and _UNPRINTABLE.search(text) is None:
        return "'" + text.replace("'", "''") + "'"
    return _double_quoted(text)


def quoted(text: str) -> str:
    """A single-quoted scalar, for timestamps (a YAML 1.1 loader would make them dates)."""
    return "'" + text.replace("'", "''") + "'"


# ---------------------------------------------------------------------------------------
# Reading back what we wrote.


class ParseError(ValueError):
    """The text is not in the shape :func:`scalar` and the journal write."""


_DQ_DECODE = {v[1]: k for k, v in _DQ_ESCAPES.items()}
_DQ_TOKEN = re.compile(r'\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)|"', re.S)


def _parse_double_quoted(value: str) -> str:
    if len(value) < 2 or not value.endswith('"'):
        raise ParseError("unterminated double-quoted scalar")
    inner = value[1:-1]
    out = []
    pos = 0
    for match in _DQ_TOKEN.finditer(inner):
        out.append(inner[pos : match.start()])
        pos = match.end()
        token = match.group(1)
        if token is None:
            raise ParseError("bare quote inside a double-quoted scalar")
        if len(token) > 1:
            out.append(chr(int(token[1:], 16)))
        elif token in _DQ_DECODE:
            out.append(_DQ_DECODE[token])
        elif token == "_":
            out.append("\xa0")
        elif token in "/ ":
            out.append(token)
        else:
            raise ParseError(f"unknown escape \\{token}")
    out.append(inner[pos:])
    return "".join(out)


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def _parse_inline(value: str) -> str:
    if value.startswith("'"):
        if len(value) < 2 or not value.endswith("'"):
            raise ParseError("unterminated single-quoted scalar")
        return value[1:-1].replace("''", "'")
    if value.startswith('"'):
        return _parse_double_quoted(value)
    if value[:1] in ("{", "[", "&", "*", "!", ">", "%", "@", "`", "?") or " #" in value:
        raise ParseError("not a scalar this module writes")  # flow, anchors, tags...
    return value


def _parse_literal(header: str, lines: list[str], start: int, indent: int) -> tuple[str, int]:
    """Read a literal block scalar whose header is ``header``; return (text, next line)."""
    chomp = "+" if "+" in header else "-" if "-" in header else ""
    digits = header.strip("|+-")
    pad = indent + (int(digits) if digits else 2)
    prefix = " " * pad
    collected: list[str] = []
    i = start
    while i < len(lines):
        line = lines[i]
        if line.startswith(prefix):
            collected.append(line[pad:])
        elif not line.strip(" ") and len(line) < pad:
            collected.append("")
        else:
            break
        i += 1
    # Trailing blank lines belong to the scalar only with keep chomping; anything after
    # them (a less indented key) starts at the first of them for the caller.
    body = "\n".join(collected) + "\n" if collected else ""
    if chomp == "-":
        body = body.rstrip("\n")
    elif chomp == "":
        body = body.rstrip("\n") + "\n" if body.strip("\n") else ""
    return body, i


def parse_value(rest: str, lines: list[str], i: int, indent: int) -> tuple[str, int]:
    """Parse the value after ``key: `` on line ``i - 1``; return (text, next line index)."""
    if rest.startswith("|"):
        return _parse_literal(rest, lines, i, indent)
    return _parse_inline(rest), i


def parse_mapping_lines(lines: list[str], i: int, indent: int) -> tuple[dict[str, str], int]:
    """Parse ``key: value`` lines at column ``indent`` (the first may follow ``- ``)."""
    out: dict[str, str] = {}
    pad = " " * indent
    first = True
    while i < len(lines):
        line = lines[i]
        if first and line.startswith("- "):
            body = line[2:]
        elif line.startswith(pad) and not line.startswith(pad + " ") and line.strip():
            body = line[indent:]
        else:
            break
        first = False
        key, sep, rest = body.partition(":")
        if not sep or (rest and not rest.startswith(" ")) or not _KEY.match(key):
            raise ParseError(f"line {i + 1} is not a 'key: value' line")
        value, i = parse_value(rest[1:], lines, i + 1, indent)
        out[key] = value
    return out, i


def split_lines(text: str) -> list[str]:
    """Split on LF only (str.splitlines would also split on NEL, LS, PS, FF...)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def parse_document(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Parse a journal or archive we wrote: (top-level keys, message entries).

    Values come back as strings; the caller converts ``seq`` and flags.
    """
    lines = split_lines(text)
    top: dict[str, str] = {}
    messages: list[dict[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line in ("...", "---", ""):
            i += 1
        elif line.startswith("- "):
            entry, i = parse_mapping_lines(lines, i, 2)
            messages.append(entry)
        elif line.startswith("#"):
            i += 1
        else:
            key, sep, rest = line.partition(":")
            if not sep or not _KEY.match(key):
                raise ParseError(f"line {i + 1} is not a 'key: value' line")
            if key == "messages" and rest.strip() == "":
                i += 1
                continue
            value, i = parse_value(rest[1:], lines, i + 1, 0)
            top[key] = value
    return top, messages


def entry_text(fields: list[tuple[str, str]]) -> str:
    """One block-sequence item from already-rendered values, newline-terminated."""
    return "- " + "\n  ".join(f"{key}: {value}" for key, value in fields) + "\n"
