"""The entry emitter against two real loaders (ruamel.yaml, YAML 1.2; PyYAML, YAML 1.1)."""

from __future__ import annotations

import io

import pytest
import yaml as pyyaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from yamllint import linter
from yamllint.config import YamlLintConfig

from archiver import yamltext

TRICKY = [
    "",
    " ",
    "\n",
    "\n\n",
    "no",
    "No",
    "ON",
    "y",
    "~",
    "null",
    "0o17",
    "2026-11-21",
    "1_000",
    "1:20:30",
    ".inf",
    "=",
    "<<",
    "- item",
    "---",
    "...",
    "# not a comment",
    "key: value",
    "ends with colon:",
    "a #b",
    "'quoted'",
    '"double"',
    "back\\slash",
    "tab\there",
    "\ttab first",
    "  leading and trailing  ",
    "line1\nline2",
    "line1\nline2\n",
    "line1\nline2\n\n\n",
    "\nleading newline",
    "  indented first\nsecond",
    "\n  indented after blank",
    "trailing spaces   \n  \n",
    "cr\r\nlf",
    "nel\x85 ls\u2028 ps\u2029 bom\ufeff",
    "bell\x07 esc\x1b del\x7f nul\x00",
    "emoji 😀 and 👩‍👩‍👧",
    "مرحبا بالعالم",
    "שלום\nעולם",
    "line\n---\n...\n- x\n# y",
    "| literal-looking",
    "> folded-looking",
    "%percent",
    "@at",
    "`tick",
    "!tag",
    "&anchor",
    "*alias",
    "? key",
    "{flow: map}",
    "[flow, seq]",
    "x" * 5000,
]


def emit_document(text: str) -> str:
    at = yamltext.quoted("2026-11-21T10:30:05.420Z")
    fields = [("seq", "1"), ("role", "user"), ("at", at), ("text", yamltext.scalar(text, 2))]
    entry = yamltext.entry_text(fields)
    return f"user: {yamltext.inline(text)}\nmessages:\n{entry}...\n"


def load_ruamel(doc: str) -> object:
    return YAML(typ="safe", pure=True).load(io.StringIO(doc))


def load_pyyaml(doc: str) -> object:
    return pyyaml.safe_load(doc)


# Many people run `yamllint -d relaxed` over YAML in CI; a transcript must pass it (long
# lines are warnings there, and stay: a message line is never folded).
RELAXED = YamlLintConfig("extends: relaxed")


def lint_errors(doc: str) -> list[str]:
    return [f"{p.line}:{p.column} {p.rule}" for p in linter.run(doc, RELAXED) if p.level == "error"]


def check(text: str) -> None:
    doc = emit_document(text)
    for loader in (load_ruamel, load_pyyaml):
        loaded = loader(doc)
        assert isinstance(loaded, dict), (loader.__name__, doc)
        assert loaded["messages"][0]["text"] == text, (loader.__name__, doc)
        assert loaded["user"] == text, (loader.__name__, doc)
        assert loaded["messages"][0]["at"] == "2026-11-21T10:30:05.420Z"
    top, entries = yamltext.parse_document(doc)
    assert entries[0]["text"] == text, doc
    assert top["user"] == text, doc
    assert lint_errors(doc) == [], doc


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_texts_round_trip_in_both_loaders(text: str) -> None:
    check(text)


@settings(max_examples=600, deadline=None)
@given(st.text())
@example("a\n \n")
def test_any_text_round_trips_in_both_loaders(text: str) -> None:
    check(text)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["a", " ", "\n", "\t", ":", "#", "-", "'", '"', "é", "\x85"]), max_size=12
    )
)
def test_texts_made_of_yaml_syntax_round_trip(chars: list[str]) -> None:
    check("".join(chars))


def test_multiline_text_is_a_literal_block_and_non_ascii_stays_itself() -> None:
    rendered = yamltext.scalar("Grüße\nzweite Zeile", 2)
    assert rendered == "|-\n    Grüße\n    zweite Zeile"


def test_trailing_blanks_keep_a_multiline_text_exact_and_lint_clean() -> None:
    """Markdown's hard break (two spaces at a line's end) is common in model replies."""
    text = "First line  \nsecond line\t\nthird"
    rendered = yamltext.scalar(text, 2)
    assert rendered == '"First line  \\nsecond line\\t\\nthird"'
    check(text)


def test_long_text_is_never_folded() -> None:
    text = "word " * 200 + "end"
    assert "\n" not in yamltext.scalar(text.strip(), 2)
