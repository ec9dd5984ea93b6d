"""CSV rows, Markdown and HTML transcripts (archiver/transcripts.py)."""

from __future__ import annotations

import csv
import io
import re

from archiver import transcripts
from archiver.dialogfile import Dialog, Message
from archiver.transcripts import CSV_HEADER, Transcript

AWKWARD = 'He said "hi", then:\nline two, with ```fences``` and <script>alert(1)</script> & more'


def dialog(*texts: tuple[str, str], interrupted_last: bool = False) -> Transcript:
    messages = [
        Message(
            n, role, f"2026-11-21T10:30:{n:02d}.000Z", text, interrupted_last and n == len(texts)
        )
        for n, (role, text) in enumerate(texts, start=1)
    ]
    d = Dialog(
        "a|1", "d-1", "2026-11-21T10:30:00.000Z", messages, "2026-11-21T10:35:00.000Z", "user"
    )
    return Transcript("a|1", "2026-11-21-10-35-00.yaml", d)


def test_csv_is_rfc_4180_with_a_header_and_a_row_per_dialog() -> None:
    items = [
        dialog(("user", AWKWARD), ("assistant", "ok"), ("error", "boom")),
        dialog(("assistant", "hello"), ("user", "plain")),
    ]
    text = "".join(transcripts.csv_lines(items))
    # Every record ends in CRLF; a line break inside a quoted field stays as it was.
    assert text.endswith("\r\n") and text.count("\r\n") == 3
    assert '"He said ""hi"", then:\nline two' in text
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(CSV_HEADER)
    assert rows[1] == [
        "a|1",
        "d-1",
        "2026-11-21-10-35-00.yaml",
        "2026-11-21T10:30:00.000Z",
        "2026-11-21T10:35:00.000Z",
        "user",
        "3",
        "1",
        "1",
        "1",
        AWKWARD,
    ]
    assert rows[2][6:] == ["2", "1", "1", "0", "plain"]  # the first *user* message


def test_markdown_keeps_every_text_out_of_markup() -> None:
    md = transcripts.markdown(
        dialog(("user", AWKWARD), ("assistant", "fine"), interrupted_last=True)
    )
    assert md.startswith("# Dialog `d-1`\n")
    assert "- **Ended:** 2026-11-21 10:35:00 UTC (user)" in md
    # The text holds a run of three backticks: its fence is four long, around it exactly.
    assert "````text\n" + AWKWARD + "\n````\n" in md
    assert "## 2. assistant · 2026-11-21 10:30:02 UTC (interrupted)" in md
    two = "".join(transcripts.markdown_all([dialog(("user", "a")), dialog(("user", "b"))]))
    assert two.count("# Dialog") == 2 and "\n---\n" in two


def test_html_is_self_contained_and_escaped() -> None:
    page = "".join(transcripts.html_document([dialog(("user", AWKWARD)), dialog(("user", "x"))]))
    assert page.startswith("<!doctype html>") and page.endswith("</html>\n")
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "He said &quot;hi&quot;" in page
    # No resource from anywhere: no src, no link, no url(); the CSP forbids them anyway.
    assert not re.search(r"\bsrc=|<link|url\(|https?://", page)
    assert "default-src 'none'" in page and "@media print" in page
    assert page.count("<article>") == 2 and 'id="m1"' in page
