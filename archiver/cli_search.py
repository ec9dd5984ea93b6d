"""The CLI's search-index commands: search, reindex, stats; and keeping the index current
after the archive commands write or delete (:func:`index_after`).

They read the data directory directly, so they work with the server stopped; importing
this module (cli.py does) registers them on :data:`archiver.cli.main`. Only here is the
search with its fork pool imported: the server never loads it.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from . import archives, query, ranking, render, stats
from . import search as searching
from .clikit import (
    SEARCH_WORKERS,
    Failure,
    _errors,
    _filter,
    _journal,
    _nothing_found,
    _Output,
    _settings,
    _warn,
    data_option,
    main,
    reason_option,
    since_option,
    until_option,
    user_option,
)
from .config import Settings
from .dialogfile import ROLES
from .index import Index
from .index_listing import Row
from .journal import Journal


@main.command()
@click.argument("text")
@click.option("--scan", is_flag=True, help="Read every archive instead of using the index.")
@click.option("--regex", is_flag=True, help="TEXT is a Python regular expression (a scan).")
@user_option
@since_option
@until_option
@click.option("--role", type=click.Choice(ROLES), default=None, help="Only messages of ROLE.")
@reason_option
@click.option("--current", is_flag=True, help="Also search live dialogs (current.yaml).")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, metavar="N", help="Stop after N messages."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of messages.")
@data_option
def search(
    text: str,
    scan: bool,
    regex: bool,
    user: str | None,
    since: str | None,
    before: str | None,
    role: str | None,
    reason: str | None,
    current: bool,
    limit: int | None,
    as_json: bool,
    data_dir: Path | None,
) -> None:
    """Find messages by words, "phrases" and prefixes (case-insensitive).

    TEXT is a query: every word must be in the message; "a phrase" matches its words in
    a row; refund* matches words that begin so; user:, role:, reason:, since:, until:
    filter as the options do. Uses the search index (built on first use, brought up to
    date on every search), best matches first; --scan reads every archive instead, with
    the same results in the same order.

    \b
    archiver search refund
    archiver search '"order 1042" role:user' --user alice
    archiver search 'refund* since:2026-11-01' --json
    archiver search 'refund(ed|s)?' --regex --since 2026-11-01
    archiver search invoice --current --limit 5

    With --json each element is {"user", "archive", "dialog", "seq", "role", "at", "text",
    "matches"}, "matches" holding [start, end] offsets into "text".
    """
    if not text:
        raise click.UsageError("TEXT is empty")
    settings = _settings(data_dir=data_dir)
    journal = _journal(settings.data_dir)
    with _errors():
        hits: Iterator[query.Hit]
        if regex:
            hits = _regex_hits(journal, text, _filter(user, since, before, reason), role, current)
        else:
            wanted = _search_query(text, user, since, before, role, reason)
            if wanted.user is not None:
                archives.users_of(journal, wanted.user)  # an unknown user is an error
            hits = _query_hits(settings, journal, wanted, scan, current, limit)
        if limit is not None:
            hits = (hit for _, hit in zip(range(limit), hits, strict=False))
        with _Output() as out:
            if as_json:
                count = out.json_array(hit.as_json() for hit in hits)
            else:
                count = 0
                for hit in hits:
                    for line in render.hit_lines(hit, style=click.style):
                        out.line(line)
                    count += 1
    if not count:
        _nothing_found(f"no message matches {text!r}")


def _search_query(
    text: str,
    user: str | None,
    since: str | None,
    before: str | None,
    role: str | None,
    reason: str | None,
) -> query.Search:
    """TEXT parsed, with the options' filters added (a filter given both ways is an error)."""
    try:
        wanted = query.parse(text)
    except query.QueryError as exc:
        raise click.UsageError(str(exc)) from None
    options = {"user": user, "since": since, "before": before, "role": role, "reason": reason}
    changes: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if getattr(wanted, name) is not None:
            shown = "until" if name == "before" else name
            raise click.UsageError(f"{shown} is given both in TEXT and as --{shown}")
        changes[name] = value
    return dataclasses.replace(wanted, **changes)


def _regex_hits(
    journal: Journal, text: str, where: archives.Filter, role: str | None, current: bool
) -> Iterator[query.Hit]:
    try:
        compiled = searching.Query.compile(text, regex=True)
    except Exception as exc:  # re.error, and the rare overflow/recursion of a huge pattern
        raise click.UsageError(f"bad regular expression: {exc}") from None
    return searching.search(
        journal,
        compiled,
        where,
        role=role,
        current=current,
        on_error=_warn,
        workers=SEARCH_WORKERS,
    )


def _query_hits(
    settings: Settings,
    journal: Journal,
    wanted: query.Search,
    scan: bool,
    current: bool,
    limit: int | None,
) -> Iterator[query.Hit]:
    if current:
        yield from query.scan_current(journal, wanted)
    searchable = None if scan or not settings.search_index else _fresh_index(settings)
    if searchable is None:
        yield from ranking.ranked_scan(journal, wanted, on_error=_warn)
        return
    try:
        for path, error in searchable.damaged(wanted.user):
            _warn(path, ValueError(error))
        yield from searchable.search(wanted, limit=limit).hits
    finally:
        searchable.close()


def _fresh_index(settings: Settings) -> Index | None:
    """The search index, brought up to date with the files; None (and a warning) if it
    cannot be written here (a read-only copy of the data directory): then we scan."""
    found = Index(settings.data_dir, settings.index_path)
    try:
        if not found.exists():
            click.echo("building the search index (once; later searches are fast)", err=True)
        found.sync()
    except (sqlite3.Error, OSError) as exc:
        click.echo(f"warning: search index unusable ({exc}); reading every archive", err=True)
        found.close()
        return None
    return found


def indexed_listing(
    settings: Settings, journal: Journal, where: archives.Filter, limit: int | None
) -> list[Row] | None:
    """``archiver list`` from an existing index brought up to date (no file is opened but
    those whose ends it could not read), as rows; None to read the files instead: no
    index, a read-only one, one user with a limit (that reads only the files it shows),
    or user directories the index cannot list (index_listing)."""
    if not settings.search_index or (limit is not None and where.user is not None):
        return None
    found = Index(settings.data_dir, settings.index_path)
    if not found.exists() or not found.has_this_schema():
        return None  # listing never builds it: that is a search's, or reindex's, job
    archives.users_of(journal, where.user)  # UnknownUser, as the file listing raises it
    try:
        found.sync()
        return found.listing(where, limit, _warn)
    except (sqlite3.Error, OSError):
        return None
    finally:
        found.close()


def index_after(settings: Settings, paths: Iterable[Path] = (), user: str | None = None) -> None:
    """Tell an existing index about archives this command wrote or deleted (it would
    catch up by itself later; this keeps it current at once). Never builds one."""
    found = Index(settings.data_dir, settings.index_path)
    if not settings.search_index or not found.exists():
        return
    try:
        if user is not None:
            found.forget_user(user)
        found.update(paths)
    except (sqlite3.Error, OSError) as exc:
        click.echo(f"warning: could not update the search index: {exc}", err=True)
    finally:
        found.close()


@main.command()
@data_option
def reindex(data_dir: Path | None) -> None:
    """Rebuild the search index from the archive files.

    The index is derived data (the files are the truth): this empties it and reads every
    archive again. Safe while servers run; their searches see the new index at once.

    \b
    archiver reindex
    """
    settings = _settings(data_dir=data_dir)
    _journal(settings.data_dir)
    found = Index(settings.data_dir, settings.index_path)
    try:
        done = found.rebuild(workers=SEARCH_WORKERS)  # this process has no other thread
        counted, messages = found.counts()
    except (sqlite3.Error, OSError) as exc:
        raise Failure(f"cannot write the search index: {exc}") from None
    finally:
        found.close()
    click.echo(
        f"indexed {archives.plural(counted, 'archive')} "
        f"({archives.plural(messages, 'message')}) in {done.ms / 1000:.1f} s"
    )


@main.command("stats")
@user_option
@since_option
@until_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@data_option
def stats_(
    user: str | None,
    since: str | None,
    before: str | None,
    as_json: bool,
    data_dir: Path | None,
) -> None:
    """Print figures: archives by reason and day, users, reply times.

    Archives by reason and by day, dialogs and messages per user, the dialog length
    distribution, reply time (user message to the assistant's) and time to the first
    streamed chunk p50/p95, interrupted and failed replies, by day and by upstream
    (unknown: archives from before entries named it). Read from the search index
    (brought up to date first); --json prints what GET /admin/stats answers.

    \b
    archiver stats
    archiver stats --since 2026-11-01 --user alice --json
    """
    settings = _settings(data_dir=data_dir)
    journal = _journal(settings.data_dir)
    where = _filter(user, since, before, None)
    with _errors():
        if user is not None:
            archives.users_of(journal, user)
        found = _fresh_index(settings) if settings.search_index else None
        try:
            if found is not None:
                figures = stats.compute(found.stat_rows(where))
            else:
                pairs = archives.export_dialogs(journal, where, _warn)
                rows = ((i.user, archives.archive_time(i), d) for i, d in pairs)
                figures = stats.compute(stats.from_dialogs(rows))
        finally:
            if found is not None:
                found.close()
    if as_json:
        click.echo(json.dumps(figures, ensure_ascii=False, indent=2))
    else:
        click.echo("\n".join(_stats_lines(figures)))
    if not figures["archives"]:
        _nothing_found("no archive matches")


def _stats_lines(f: dict[str, Any]) -> list[str]:
    reply, length, first = f["reply_ms"], f["dialog_length"], f["first_token_ms"]
    reasons = ", ".join(f"{r} {n}" for r, n in f["by_reason"].items()) or "none"
    out = [
        f"archives   {f['archives']} ({reasons})",
        f"messages   {f['messages']} from {archives.plural(f['users'], 'user')}",
        f"length     p50 {length['p50']}, p95 {length['p95']} messages per dialog",
        f"replies    {reply['count']}: p50 {_ms(reply['p50'])}, p95 {_ms(reply['p95'])}; "
        f"{f['interrupted']} interrupted, {f['errors']} failed",
        f"first token {first['count']}: p50 {_ms(first['p50'])}, p95 {_ms(first['p95'])}",
        "",
        "upstream    replies  interrupted  failed",
    ]
    out += [
        f"{render.printable(r['upstream'])[:10]:10}  {r['replies']:7}  {r['interrupted']:11}"
        f"  {r['errors']:6}"
        for r in f["problems_by_upstream"]
    ]
    out += ["", "day          archives  by reason"]
    for day in f["by_day"]:
        parts = ", ".join(f"{r} {n}" for r, n in day["reasons"].items())
        out.append(f"{day['day']}  {sum(day['reasons'].values()):8}  {parts}")
    out += ["", "user                      archives  messages"]
    out += [
        f"{render.printable(u['user'])[:24]:24}  {u['archives']:8}  {u['messages']:8}"
        for u in f["top_users"]
    ]
    return out


def _ms(value: int | None) -> str:
    return "-" if value is None else f"{value / 1000:.2f} s"
