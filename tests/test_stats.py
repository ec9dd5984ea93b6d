"""The figures of archiver/stats.py: counted from the index or from the files alike, and
answered the same by GET /admin/stats and archiver stats --json."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archiver import archives, stats
from archiver.app import create_app
from archiver.cli import main
from archiver.config import Settings
from archiver.index import Index
from archiver.journal import Journal
from archiver.stats import StatArchive, StatMessage, percentile
from tests.helpers import SECRET, mint
from tests.test_review import build_fixture, write_archive

T0 = 1_700_000_000_000


def test_reply_times_lengths_days_and_failures() -> None:
    rows = [
        # user -> assistant 400 ms; user -> assistant 1500 ms, cut off; user -> error.
        StatArchive(
            "a",
            "2026-11-20T10:00:00.000Z",
            "disconnect",
            [
                StatMessage("user", T0, False),
                StatMessage("assistant", T0 + 400, False),
                StatMessage("user", T0 + 1000, False),
                StatMessage("assistant", T0 + 2500, True),
                StatMessage("user", T0 + 3000, False),
                StatMessage("error", T0 + 3100, False),
            ],
        ),
        StatArchive("b", "2026-11-21T09:00:00.000Z", "timeout", [StatMessage("user", T0, False)]),
        StatArchive(
            "a", "2026-11-21T23:59:59.999Z", "timeout", [StatMessage("assistant", T0, False)]
        ),
    ]
    f = stats.compute(rows)
    assert (f["archives"], f["messages"], f["users"]) == (3, 8, 2)
    assert f["by_reason"] == {"disconnect": 1, "timeout": 2}
    assert f["by_day"] == [
        {"day": "2026-11-20", "reasons": {"disconnect": 1}},
        {"day": "2026-11-21", "reasons": {"timeout": 2}},
    ]
    assert f["top_users"][0] == {"user": "a", "archives": 2, "messages": 7}
    assert f["reply_ms"]["count"] == 2 and (f["reply_ms"]["p50"], f["reply_ms"]["p95"]) == (
        400,
        1500,
    )
    assert [b["count"] for b in f["reply_ms"]["histogram"]][2:5] == [1, 0, 1]  # <=500, <=2000
    assert (f["interrupted"], f["errors"]) == (1, 1)
    assert f["problems_by_day"] == [{"day": "2026-11-20", "interrupted": 1, "errors": 1}]
    assert f["dialog_length"]["p50"] == 1 and f["dialog_length"]["p95"] == 6


def test_first_token_and_problems_by_upstream_with_old_archives_as_unknown() -> None:
    def ask(at: int) -> StatMessage:
        return StatMessage("user", at)

    rows = [
        # New entries: echo answered twice (once cut off), openai failed once.
        StatArchive(
            "a",
            "2026-11-22T10:00:00.000Z",
            "user",
            [
                ask(T0),
                StatMessage("assistant", T0 + 900, False, "echo", 120),
                ask(T0 + 1000),
                StatMessage("assistant", T0 + 1300, True, "echo", 300),
                ask(T0 + 2000),
                StatMessage("error", T0 + 2100, False, "openai"),
                ask(T0 + 3000),  # a reply stopped before its first chunk: no first token
                StatMessage("assistant", T0 + 3050, True, "openai", None),
            ],
        ),
        # An archive from before the fields: counted, under "unknown", no first token.
        StatArchive(
            "b",
            "2026-11-21T10:00:00.000Z",
            "timeout",
            [ask(T0), StatMessage("assistant", T0 + 50, True), ask(T0 + 60)],
        ),
        StatArchive(
            "b", "2026-11-21T11:00:00.000Z", "timeout", [ask(T0), StatMessage("error", T0)]
        ),
    ]
    f = stats.compute(rows)
    assert f["first_token_ms"]["count"] == 2
    assert (f["first_token_ms"]["p50"], f["first_token_ms"]["p95"]) == (120, 300)
    assert f["reply_ms"]["count"] == 4  # every assistant answer, with or without the field
    assert f["problems_by_upstream"] == [
        {"upstream": "echo", "replies": 2, "interrupted": 1, "errors": 0},
        {"upstream": "openai", "replies": 2, "interrupted": 1, "errors": 1},
        {"upstream": "unknown", "replies": 2, "interrupted": 1, "errors": 1},
    ]
    assert (f["interrupted"], f["errors"]) == (3, 2)
    empty = stats.compute([])
    assert empty["first_token_ms"] == empty["reply_ms"] and empty["problems_by_upstream"] == []


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5], 0.95) == 5
    assert percentile(list(range(1, 101)), 0.95) == 95 and percentile([1, 2], 0.5) == 1


def test_the_index_counts_what_the_files_hold(tmp_path: Path) -> None:
    build_fixture(tmp_path)
    write_archive(
        tmp_path,
        "carol",
        "2026-11-22-00-00-00.yaml",
        [("user", "q")],
        ended="2026-11-22T00:00:00.000Z",
    )
    write_archive(  # entries that name their upstream, beside the old ones above
        tmp_path,
        "carol",
        "2026-11-22-01-00-00.yaml",
        [
            ("user", "q"),
            ("assistant", "a", {"upstream": "echo", "first_token_ms": 7}),
            ("user", "q2"),
            ("assistant", "cut", {"interrupted": True, "upstream": "n8n", "first_token_ms": 0}),
            ("user", "q3"),
            ("error", "down", {"upstream": "n8n"}),
        ],
        ended="2026-11-22T01:00:00.000Z",
    )
    journal = Journal(tmp_path)
    index = Index(tmp_path)
    index.sync()
    for where in (
        archives.Filter(),
        archives.Filter(user="alice"),
        archives.Filter(since="2026-11-20T00:00:00.000Z"),
    ):
        pairs = archives.export_dialogs(journal, where)
        from_files = stats.compute(
            stats.from_dialogs((i.user, archives.archive_time(i), d) for i, d in pairs)
        )
        assert stats.compute(index.stat_rows(where)) == from_files
    mixed = stats.compute(index.stat_rows(archives.Filter(user="carol")))
    assert mixed["first_token_ms"]["count"] == 2
    assert [r["upstream"] for r in mixed["problems_by_upstream"]] == ["echo", "n8n"]
    index.close()


entry = st.tuples(
    st.sampled_from(["user", "assistant", "error"]),
    st.just("t"),
    st.fixed_dictionaries(
        {},
        optional={
            "interrupted": st.booleans(),
            "upstream": st.sampled_from(["echo", "openai", "n8n", "no"]),
            "first_token_ms": st.integers(0, 70_000),
        },
    ),
)
corpus = st.lists(
    st.tuples(st.sampled_from(["ann", "bob"]), st.lists(entry, min_size=1, max_size=6)),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(corpus)
def test_the_index_and_the_files_agree_on_random_upstreams(
    tmp_path_factory: pytest.TempPathFactory, archived: list[tuple[str, list[Any]]]
) -> None:
    """Old and new entries mixed at random: the index's figures are the files'."""
    data = tmp_path_factory.mktemp("data")
    for n, (user, texts) in enumerate(archived):
        ended = f"2026-11-2{n % 3}T10:00:{n:02d}.000Z"
        write_archive(data, user, f"2026-11-2{n % 3}-10-00-{n:02d}.yaml", texts, ended=ended)
    index = Index(data)
    index.sync()
    pairs = archives.export_dialogs(Journal(data), archives.Filter())
    rows = ((i.user, archives.archive_time(i), d) for i, d in pairs)
    assert stats.compute(index.stat_rows(archives.Filter())) == stats.compute(
        stats.from_dialogs(rows)
    )
    index.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    build_fixture(tmp_path)
    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET, fsync="no", echo_delay=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            yield http


@pytest.mark.anyio
async def test_admin_stats_answers_what_the_cli_prints(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    admin = {"Authorization": f"Bearer {mint('root', admin=True)}"}
    plain = {"Authorization": f"Bearer {mint('alice')}"}
    assert (await client.get("/admin/stats", headers=plain)).status_code == 403
    bad = await client.get("/admin/stats?since=yesterday", headers=admin)
    assert bad.status_code == 400 and bad.json()["error"] == "bad_time"
    cli = CliRunner().invoke(
        main, ["stats", "--json", "--data", str(tmp_path)], catch_exceptions=False
    )
    assert cli.exit_code == 0, cli.output
    expected = json.loads(cli.stdout)
    # 4 archives, and the 2 live dialogs the start-up recovery archived.
    assert expected["archives"] == 6 and expected["by_reason"]["recovery"] == 2
    # The server's index catches up in its worker thread; the first full sync is queued
    # before serving, so the answer is complete once it has run.
    deadline = time.monotonic() + 20
    while (body := (await client.get("/admin/stats", headers=admin)).json()) != expected:
        assert time.monotonic() < deadline, f"the index never caught up: {body}"
        await anyio.sleep(0.05)
    narrowed = await client.get("/admin/stats?user=alice&until=2026-11-20", headers=admin)
    assert narrowed.json()["archives"] == 3
    text = CliRunner().invoke(main, ["stats", "--data", str(tmp_path)], catch_exceptions=False)
    assert text.stdout.startswith("archives   6 (") and "2026-11-21" in text.stdout
    # The fixture's archives predate the upstream field: their replies are "unknown".
    assert "\nfirst token 0: p50 -, p95 -\n" in text.stdout
    assert "\nunknown     " in text.stdout and "upstream    replies" in text.stdout
