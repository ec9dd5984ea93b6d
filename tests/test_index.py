from __future__ import annotations

import io
import os
import random
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from archiver import index_rowids, index_search, query, ranking
from archiver.archives import ArchiveInfo, Filter, list_archives
from archiver.cli_archives import _info_json, _info_line, listing_text
from archiver.clikit import _Output
from archiver.dialogfile import entry_offsets
from archiver.index import Index
from archiver.index_listing import row_of
from archiver.indexer import Indexer
from archiver.journal import Journal
from archiver.layout import user_dir_name
from archiver.query import Hit
from tests.helpers import wait_for
from tests.test_review import write_archive

# Words chosen to make the two sides disagree if either got the folding wrong: case,
# NFKC (the fi ligature, fullwidth letters), casefold (ß, the dotted I), a decomposed
# accent, digits glued to punctuation, and underscores (a separator).
WORDS = [
    "refund",
    "Refunded",
    "REFUNDS",
    "order",
    "#1042",
    "1042",
    "don't",
    "e-bike",
    "Straße",
    "STRASSE",
    "\ufb01le",
    "file",
    "\uff32efund",
    "cafe\u0301",
    "café",
    "İstanbul",
    "istanbul",
    "snake_case",
    "Zürich",
    "ZÜRICH",
    "naïve",
    "42",
    "ok",
    "no",
    "OR",
]
USERS = ["alice", "auth0|42", "Bob Smith", "team/ops"]
ROLES = ["user", "assistant", "error"]
REASONS = ["disconnect", "timeout", "user"]

message_text = st.one_of(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(lambda words: " ".join(words)),
    st.lists(
        st.sampled_from(WORDS) | st.sampled_from([" ", "\n", ", ", "...", "  \n  ", "_"]),
        min_size=1,
        max_size=12,
    ).map("".join),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
)
archive = st.tuples(
    st.sampled_from(USERS),
    st.integers(1, 28),  # day of November
    st.sampled_from(REASONS),
    st.lists(st.tuples(st.sampled_from(ROLES), message_text), min_size=1, max_size=5),
)
corpus = st.lists(archive, min_size=1, max_size=12)


Archive = tuple[str, int, str, list[tuple[str, str]]]


def write_corpus(data: Path, archives: list[Archive], first: int = 0) -> list[Path]:
    """Archive files as the journal writes them; the n-th is named after second n."""
    paths = []
    for n, (user, day, reason, texts) in enumerate(archives, start=first):
        name = f"2026-11-{day:02d}-10-{n // 60:02d}-{n % 60:02d}.yaml"
        ended = f"2026-11-{day:02d}T10:{n // 60:02d}:{n % 60:02d}.000Z"
        paths.append(write_archive(data, user, name, texts, ended=ended, reason=reason))
    return paths


@st.composite
def queries(draw: st.DrawFn) -> str:
    terms = []
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["word", "prefix", "phrase", "phrase_prefix"]))
        word = draw(st.sampled_from(WORDS))
        if kind == "word":
            terms.append(word)
        elif kind == "prefix":
            tokens = query.tokens(word)
            cut = draw(st.integers(1, len(tokens[-1])))
            terms.append(tokens[-1][:cut] + "*")
        else:
            other = draw(st.sampled_from(WORDS))
            gap = draw(st.sampled_from([" ", "  ", "\t", " , "]))
            terms.append(f'"{word}{gap}{other}"' + ("*" if kind == "phrase_prefix" else ""))
    filters = draw(
        st.lists(
            st.sampled_from(
                [
                    'user:"auth0|42"',
                    "user:alice",
                    'user:"Bob Smith"',
                    "role:user",
                    "role:assistant",
                    "reason:timeout",
                    "since:2026-11-10",
                    "until:2026-11-20",
                    "until:2026-11-05T10:00:03Z",
                ]
            ),
            max_size=2,
            unique_by=lambda f: f.split(":")[0],
        )
    )
    return " ".join(terms + filters)


def found(hits: list[Hit]) -> list[tuple[str, str, int]]:
    return [(h.user, h.archive, h.message.seq) for h in hits]


# A window small enough that random corpora have several (the default is thousands).
WINDOW = 3


def assert_agree(data: Path, index: Index, texts: list[str], limit: int = 2) -> None:
    """The index gives the scan's hits in the scan's order, in one go and page by page
    (pages of ``limit``, across windows of WINDOW)."""
    journal = Journal(data)
    for text in texts:
        wanted = query.parse(text)
        scanned = found(list(ranking.ranked_scan(journal, wanted, window=WINDOW)))
        indexed = found(index.search(wanted, limit=None).hits)
        assert indexed == scanned, f"query {text!r}: index {indexed} != scan {scanned}"
        paged: list[tuple[str, str, int]] = []
        cursor = None
        while True:
            page = index.search(wanted, limit=limit, cursor=cursor)
            paged += found(page.hits)
            if page.next is None:
                break
            cursor = page.next
        assert paged == scanned, f"query {text!r} in pages: {paged} != scan {scanned}"
        assert set(scanned) == set(found(list(query.scan(journal, wanted))))


PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(corpus, st.lists(queries(), min_size=1, max_size=4))
def test_index_finds_what_the_scan_finds(archives: list[Archive], texts: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_corpus(data, archives)
        index = Index(data, window=WINDOW)
        index.sync()
        assert_agree(data, index, texts)
        index.close()


@PROPERTY
@given(corpus, corpus, st.integers(0, 12), st.lists(queries(), min_size=1, max_size=3))
def test_catching_up_after_a_crash_mid_update(
    first: list[Archive], later: list[Archive], indexed: int, texts: list[str]
) -> None:
    """Some archives indexed one by one, then a "crash" (the process ends with the rest
    never indexed, the index left as it was); a new process catches up at start-up."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        paths = write_corpus(data, first)
        index = Index(data, window=WINDOW)
        index.sync()
        more = write_corpus(data, later, first=len(paths))
        index.update(more[:indexed])
        index.close()  # the crash: nothing else of the batch reached the index
        again = Index(data, window=WINDOW)
        again.sync(full=True)
        assert_agree(data, again, texts)
        again.close()


@PROPERTY
@given(corpus, st.data(), st.lists(queries(), min_size=1, max_size=3))
def test_catching_up_after_archives_are_deleted_or_forgotten(
    archives: list[Archive], data_draw: st.DataObject, texts: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        paths = write_corpus(data, archives)
        index = Index(data, window=WINDOW)
        index.sync()
        for path in data_draw.draw(st.lists(st.sampled_from(paths), unique=True)):
            path.unlink()  # deleted by hand, or pruned by another process
        if data_draw.draw(st.booleans()):
            forgotten = data_draw.draw(st.sampled_from(USERS))
            shutil.rmtree(data / "users" / user_dir_name(forgotten), ignore_errors=True)
        index.sync()
        assert_agree(data, index, texts)
        index.close()


def assert_rowids_in_recency_order(index: Index) -> None:
    rows = index._db().execute(
        "SELECT m.id FROM msgs m JOIN files f ON f.id = m.file"
        " ORDER BY f.ended, f.name, f.udir, m.seq"
    )
    ids = [r[0] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@PROPERTY
@given(corpus, st.randoms(use_true_random=False), st.booleans(), st.lists(queries(), max_size=3))
def test_archives_indexed_in_any_order_keep_rowids_in_recency_order(
    archives: list[Archive], rng: random.Random, gap: bool, texts: list[str]
) -> None:
    """One update per archive, in a random order (late archives, an import, another
    process); with no gap every late one moves the newer ones up. Then some change."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(index_rowids, "GAP", index_rowids.GAP if gap else 0),
    ):
        data = Path(tmp) / "data"
        paths = write_corpus(data, archives)
        index = Index(data, window=WINDOW)
        for path in rng.sample(paths, len(paths)):
            index.update([path])
        assert_rowids_in_recency_order(index)
        for n in rng.sample(range(len(paths)), len(paths) // 2):
            if rng.random() < 0.5:
                paths[n].unlink()
            else:  # rewritten longer: it needs more room than it had
                user, day, reason, texts_of = archives[n]
                longer = texts_of + [("user", "refund order ok"), ("assistant", "no")] * 3
                write_corpus(data, [(user, day, reason, longer)], first=n)
            index.update([paths[n]])
        assert_rowids_in_recency_order(index)
        assert_agree(data, index, texts)
        index.close()


def test_a_query_is_parsed_into_terms_and_filters() -> None:
    wanted = query.parse('Refund* "order  #1042" user:"auth0|42" role:user since:2026-11-01')
    assert wanted.terms == (
        query.Term(("refund",), prefix=True),
        query.Term(("order", "1042")),
    )
    assert (wanted.user, wanted.role) == ("auth0|42", "user")
    assert wanted.since == "2026-11-01T00:00:00.000Z"
    assert wanted.fts() == '"refund" * AND "order 1042"'


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "at least one word"),
        ("user:alice", "at least one word"),
        ('"refund', "not closed"),
        ("re*fund", "may only end a word"),
        ("!!!", "no letters or digits"),
        ("refund role:robot", "role: is one of"),
        ("refund reason:bored", "reason: is one of"),
        ("refund since:soon", "neither a date"),
        ("refund user:", "needs a value"),
        ("refund user:a user:b", "given twice"),
        ('ab"cd', "quotes go around"),
    ],
)
def test_a_malformed_query_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(query.QueryError, match=says):
        query.parse(text)


def test_fts_syntax_in_a_query_is_only_words(tmp_path: Path) -> None:
    """NEAR, OR, NOT, column filters and parentheses are plain words here."""
    wanted = query.parse("NEAR(a b) OR body:x -y ^z")
    assert wanted.fts() == '"near a" AND "b" AND "or" AND "body x" AND "y" AND "z"'
    data = tmp_path / "data"
    write_corpus(data, [("alice", 1, "user", [("user", "near a b or body x y z")])])
    index = Index(data, window=WINDOW)
    index.sync()
    assert len(index.search(wanted).hits) == 1


def test_tokens_fold_case_and_compatibility_forms() -> None:
    assert query.tokens("Straße \ufb01le \uff32efund cafe\u0301 snake_case") == [
        "strasse",
        "file",
        "refund",
        "café",
        "snake",
        "case",
    ]


def test_spans_and_snippet_mark_the_words() -> None:
    text = "Hello.\nMy Refund for order #1042 is late; refunds take long."
    wanted = query.parse('refund* "order 1042"')
    spans = wanted.spans(text)
    assert [text[s:e] for s, e in spans] == ["Refund", "order #1042", "refunds"]
    pieces = query.snippet(text, spans)
    assert pieces[1::2] == ["Refund", "order #1042", "refunds"]
    assert "".join(pieces) == text.replace("\n", " ")


def test_entry_offsets_cut_the_file_into_its_entries(tmp_path: Path) -> None:
    path = write_archive(
        tmp_path,
        "a",
        "2026-11-21-10-00-00.yaml",
        [("user", "one"), ("assistant", "two\nlines\n\nwith a gap"), ("user", "three")],
        ended="2026-11-21T10:00:00.000Z",
    )
    data = path.read_bytes()
    offsets = entry_offsets(data, 3)
    assert offsets is not None
    entries = [data[p : p + n] for p, n in offsets]
    assert [e.split(b"\n")[0] for e in entries] == [b"- seq: 1", b"- seq: 2", b"- seq: 3"]
    assert entries[-1].endswith(b"text: three\n")


def test_a_changed_file_is_indexed_again_and_a_damaged_one_finds_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = write_archive(
        data,
        "a",
        "2026-11-21-10-00-00.yaml",
        [("user", "refund")],
        ended="2026-11-21T10:00:00.000Z",
    )
    index = Index(data, window=WINDOW)
    index.sync()
    write_archive(
        data,
        "a",
        "2026-11-21-10-00-00.yaml",
        [("user", "invoice")],
        ended="2026-11-21T10:00:00.000Z",
    )
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    index.update([path])
    assert not index.search(query.parse("refund")).hits
    assert [h.message.text for h in index.search(query.parse("invoice")).hits] == ["invoice"]
    path.write_bytes(b"\xff\xfe not yaml")
    index.update([path])
    assert not index.search(query.parse("invoice")).hits
    assert index.counts() == (1, 0)


def test_two_processes_index_at_once_without_losing_a_file(tmp_path: Path) -> None:
    """Two Index objects (two connections, as two processes have) sync the same
    directory concurrently: WAL and the busy timeout serialize their transactions."""
    data = tmp_path / "data"
    paths = write_corpus(
        data, [("alice", d % 28 + 1, "user", [("user", f"word{d}")]) for d in range(60)]
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            Index(data, window=WINDOW).update(paths)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    index = Index(data, window=WINDOW)
    assert index.counts() == (60, 60)
    assert len(index.search(query.parse("word*"), limit=None).hits) == 60


def indexed_as_of(data: Path, version: str, *statements: str) -> Index:
    """An index of ``data`` made by this code, then turned into an older schema's: the
    ``statements`` undo what came later, and the meta row says ``version``."""
    index = Index(data, window=WINDOW)
    index.sync()
    index.close()
    db = sqlite3.connect(index.path)
    for statement in statements:
        db.execute(statement)
    db.execute("UPDATE meta SET value=? WHERE key='version'", (version,))
    db.commit()
    db.close()
    return index


def test_the_index_is_rebuilt_when_its_version_is_another(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_corpus(data, [("alice", 1, "user", [("user", "refund")])])
    indexed_as_of(data, "0")
    again = Index(data, window=WINDOW)
    assert again.counts() == (0, 0)  # rebuilt empty: the next sync fills it
    again.sync()
    assert len(again.search(query.parse("refund")).hits) == 1


def test_the_indexer_thread_catches_up_then_follows_what_is_submitted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_corpus(data, [("alice", 1, "user", [("user", "before start")])])
    indexer = Indexer(Index(data, window=WINDOW))
    indexer.start()
    searcher = Index(data, window=WINDOW)
    wait_for(lambda: searcher.search(query.parse("before")).hits, what="the start-up catch-up")
    [path] = write_corpus(data, [("bob", 2, "user", [("user", "after start")])])[-1:]
    indexer.submit(path)
    wait_for(lambda: searcher.search(query.parse("after")).hits, what="the submitted archive")
    path.unlink()
    indexer.submit(path)
    wait_for(lambda: not searcher.search(query.parse("after")).hits, what="the deletion")
    indexer.stop()


def test_a_seq_sqlite_cannot_hold_marks_the_file_damaged_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    """Found by test_reliability_crash: a hand-edited seq of 23 digits raised OverflowError
    in the worker thread, which died, and nothing was indexed after it."""
    bad = write_archive(
        tmp_path,
        "u",
        "2026-11-21-10-00-00.yaml",
        [("user", "hi")],
        ended="2026-11-21T10:00:00.000Z",
    )
    bad.write_bytes(bad.read_bytes().replace(b"- seq: 1\n", b"- seq: 99999999999999999999999\n"))
    indexer = Indexer(Index(tmp_path))
    indexer.start()
    good = write_archive(
        tmp_path,
        "u",
        "2026-11-21-11-00-00.yaml",
        [("user", "hi")],
        ended="2026-11-21T10:00:00.000Z",
    )
    indexer.submit(good)
    indexer.stop()
    index = Index(tmp_path)
    assert [(p.name, e) for p, e in index.damaged()] == [
        (bad.name, "a message seq is out of range")
    ]
    assert [h.archive for h in index.search(query.parse("hi")).hits] == [good.name]
    index.close()


# Users whose directory names are encoded (and sort otherwise than the ids do), one
# that drives a terminal, one whose "%41" must stay literal.
LISTED_USERS = ["ünï", "alice", "auth0|42", "team/ops", "%41", "\x1b[31mred", ".hidden", "a\tb"]
DAMAGE = ["none", "none", "none", "torn", "seq", "no trailer", "ended later", "header"]
listed_archive = st.tuples(
    st.sampled_from(LISTED_USERS),
    st.integers(0, 1),  # the second of its name: few, so names and times tie across users
    st.sampled_from([None, None, 2, 10]),  # a collision suffix
    st.sampled_from(REASONS),
    st.integers(0, 3),  # messages
    st.sampled_from(DAMAGE),
)
listing_filters = st.tuples(  # mostly none: the listed archives are all of one minute
    st.sampled_from([None, None, None, *LISTED_USERS]),
    st.sampled_from([None, None, None, "2026-11-10T10:00:00.500Z", "2026-11-10T10:00:01.000Z"]),
    st.sampled_from([None, None, None, "2026-11-10T10:00:01.000Z", "2026-11-10T10:01:00.000Z"]),
    st.sampled_from([None, None, None, *REASONS]),
    st.sampled_from([None, None, 1, 3, 8]),
)


def write_listed(data: Path, items: list[tuple[str, int, int | None, str, int, str]]) -> None:
    """Archives that tie on time and name across users, with collision suffixes, and
    damaged in the ways a listing meets: ends that cannot be read, a file that does not
    parse, no trailer (the name's time), an ended after the name (Filter.too_old)."""
    for user, second, suffix, reason, count, damage in items:
        name = f"2026-11-10-10-00-{second:02d}" + (f"-{suffix}" if suffix else "") + ".yaml"
        ended = f"2026-11-10T10:00:{second:02d}.{500 if damage == 'ended later' else 0:03d}Z"
        if damage == "ended later":
            ended = ended.replace("10:00:", "10:01:")
        texts = [("user", f"m{i}") for i in range(count)]
        path = write_archive(data, user, name, texts, ended=ended, reason=reason)
        body = path.read_bytes()
        if damage == "torn":
            body = body[:-40]
        elif damage == "seq":
            body = body.replace(b"\n- seq", b"\n-  seq", 1)
        elif damage == "no trailer":
            body = body[: body.rindex(b"ended:")]
        elif damage == "header":
            body = b"\xff\xfe" + body
        path.write_bytes(body)


def reference_text(infos: list[ArchiveInfo], as_json: bool) -> str:
    """What `archiver list` printed before it was built whole: a line, or a JSON object
    of its own encoder call, per archive, through clikit's _Output."""
    out = io.StringIO()
    with mock.patch("click.echo", lambda text: out.write(text + "\n")), _Output() as lines:
        if as_json:
            lines.json_array(_info_json(i) for i in infos)
        else:
            for info in infos:
                lines.line(_info_line(info))
    return out.getvalue()


@PROPERTY
@given(corpus, st.lists(listed_archive, max_size=20), listing_filters)
@example(  # a tie on time and name: "ünï" sorts after "alice", its directory before
    [("alice", 1, "user", [("user", "x")])],
    [("ünï", 1, None, "user", 1, "none"), ("alice", 1, None, "user", 1, "none")],
    (None, None, None, None, None),
)
@example(  # ended after --since, named before it: too old by its name (Filter.too_old)
    [("alice", 1, "user", [("user", "x")])],
    [("alice", 0, None, "user", 1, "ended later"), ("alice", 1, 2, "user", 1, "none")],
    (None, "2026-11-10T10:00:01.000Z", None, None, None),
)
@example(  # --until is exclusive; collision numbers 2 < 10 (not as text)
    [("alice", 1, "user", [("user", "x")])],
    [("alice", 1, 10, "user", 1, "none"), ("alice", 1, 2, "user", 1, "none")],
    (None, None, "2026-11-10T10:00:01.000Z", None, None),
)
def test_the_index_lists_what_the_files_list(
    archives: list[Archive],
    listed: list[tuple[str, int, int | None, str, int, str]],
    filters: tuple[str | None, str | None, str | None, str | None, int | None],
) -> None:
    user, since, before, reason, limit = filters
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        paths = write_corpus(data, archives)
        paths[0].write_bytes(paths[0].read_bytes()[:-40])  # torn: its ends cannot be read
        if len(paths) > 1:
            paths[1].write_bytes(paths[1].read_bytes().replace(b"\n- seq", b"\n-  seq", 1))
        write_listed(data, listed)
        index = Index(data, window=WINDOW)
        index.sync()
        journal = Journal(data)
        if user is not None and not journal.layout.has_user(user):
            user = None  # the CLI says "no user" before either listing
        where = Filter(user=user, since=since, before=before, reason=reason)
        listed_errors: list[tuple[Path, str]] = []
        indexed_errors: list[tuple[Path, str]] = []
        scanned = list_archives(
            journal,
            where=where,
            limit=limit,
            on_error=lambda p, e: listed_errors.append((p, str(e))),
        )
        rows = index.listing(where, limit, lambda p, e: indexed_errors.append((p, str(e))))
        assert rows == [row_of(i) for i in scanned]
        assert indexed_errors == listed_errors
        for as_json in (False, True):
            assert listing_text(rows, as_json) == reference_text(scanned, as_json)
        index.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus, st.lists(queries(), min_size=1, max_size=3))
def test_a_rebuild_in_forked_workers_finds_what_the_scan_finds(
    archives: list[Archive], texts: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_corpus(data, archives)
        index = Index(data, window=WINDOW)
        index.sync()
        index.rebuild(workers=3)
        assert index.counts()[0] == len(archives)
        assert_agree(data, index, texts)
        index.close()


def test_an_index_of_schema_4_is_rebuilt_with_the_upstream_columns(tmp_path: Path) -> None:
    """Schema 4's msgs had no upstream/first_token_ms: such an index is made again, and
    the new columns then hold what the entries say (NULL where they say nothing)."""
    data = tmp_path / "data"
    texts = [
        ("user", "q"),
        ("assistant", "a", {"upstream": "echo", "first_token_ms": 5}),
        ("user", "q2"),
        ("assistant", "old"),
    ]
    write_corpus(data, [("alice", 1, "user", texts)])
    indexed_as_of(data, "4", "ALTER TABLE msgs DROP COLUMN upstream")
    again = Index(data, window=WINDOW)
    again.sync()
    [row] = list(again.stat_rows(Filter()))
    assert [(m.upstream, m.first_token_ms) for m in row.messages] == [
        (None, None),
        ("echo", 5),
        (None, None),
        (None, None),
    ]
    again.close()


def test_no_word_nor_prefix_matches_an_owner_token(tmp_path: Path) -> None:
    """Each row's owner column holds "§" and its directory name in hex: a query's tokens
    never hold "§", so only message texts match, as in the scan."""
    data = tmp_path / "data"
    owner = index_search.owner_token(user_dir_name("alice"))
    texts = [("user", f"say {owner[1:]}"), ("user", "hello")]
    write_corpus(data, [("alice", 1, "user", texts)])
    index = Index(data, window=WINDOW)
    index.sync()
    for text in (owner, owner[1:], owner[1:3] + "*", "user:alice " + owner[1:]):
        assert [h.message.seq for h in index.search(query.parse(text)).hits] == [1], text
    assert [h.message.seq for h in index.search(query.parse("hello user:alice")).hits] == [2]
    index.close()


def test_an_index_of_schema_7_is_rebuilt_with_the_owner_column(tmp_path: Path) -> None:
    """Schema 7's fts had one column (no owner tokens, so a user's search found nothing
    through them): such an index is made again on open, and a user's search then finds
    that user's messages only."""
    data = tmp_path / "data"
    write_corpus(
        data, [("alice", 1, "user", [("user", "refund")]), ("bob", 2, "user", [("user", "refund")])]
    )
    indexed_as_of(
        data,
        "7",
        "DROP TABLE fts",
        "CREATE VIRTUAL TABLE fts USING fts5(body, content='', tokenize='ascii')",
    )
    again = Index(data, window=WINDOW)
    assert again.counts() == (0, 0)
    again.sync()
    hits = again.search(query.parse("refund user:bob")).hits
    assert [h.user for h in hits] == ["bob"]
    columns = [r[1] for r in again._db().execute("PRAGMA table_info(fts)")]
    assert columns == ["body", "owner"]
    again.close()


def test_an_index_of_another_version_is_not_this_schema_until_opened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_archive(
        data, "a", "2026-11-21-10-00-00.yaml", [("user", "hi")], ended="2026-11-21T10:00:00.000Z"
    )
    index = Index(data, window=WINDOW)
    assert not index.has_this_schema()  # no file yet
    index.sync()
    assert index.has_this_schema()
    index._db().execute("UPDATE meta SET value = 'old' WHERE key = 'version'")
    assert not index.has_this_schema()
    index.close()
