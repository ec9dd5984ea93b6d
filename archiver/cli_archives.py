"""The CLI's archive commands: list, show, search, watch, export, sweep, prune, forget.

They read the data directory directly, so they work with the server stopped; importing
this module (cli.py does) registers them on :data:`archiver.cli.main`. Only here are the
terminal rendering and the search (with its fork pool) imported: the server never loads
them.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import click

from . import archives, render
from . import search as searching
from .archives import ArchiveInfo
from .clikit import (
    SEARCH_WORKERS,
    Failure,
    _errors,
    _filter,
    _journal,
    _nothing_found,
    _Output,
    _settings,
    _to_json,
    _warn,
    data_option,
    main,
    reason_option,
    since_option,
    until_option,
    user_option,
)
from .dialogfile import ROLES
from .errors import JournalError
from .journal import Journal
from .layout import CURRENT, instances_dir
from .owners import alive_in


def _info_json(info: ArchiveInfo) -> dict[str, Any]:
    return {"user": info.user, **info.as_json()}


def _info_line(info: ArchiveInfo) -> str:
    fields = [render.printable(info.user), info.name, info.started, info.ended, info.reason]
    return "\t".join(str(f) for f in [*fields, info.messages])


def _list_damaged(journal: Journal, user: str | None, as_json: bool) -> None:
    found = [(u, p) for u, p in journal.layout.damaged_files() if user is None or u == user]
    with _Output() as out:
        if as_json:
            out.json_array({"user": u, "file": str(p), "bytes": p.stat().st_size} for u, p in found)
        else:
            for u, p in found:
                out.line(f"{render.printable(u)}\t{p}\t{p.stat().st_size}")
    if not found:
        _nothing_found("no damaged journal")


@main.command("list")
@user_option
@since_option
@until_option
@reason_option
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, metavar="N", help="At most N archives."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option(
    "--damaged", is_flag=True, help="List journals moved aside as damaged instead (user, file)."
)
@data_option
def list_(
    user: str | None,
    since: str | None,
    before: str | None,
    reason: str | None,
    limit: int | None,
    as_json: bool,
    damaged: bool,
    data_dir: Path | None,
) -> None:
    """List archived dialogs, newest first.

    One tab-separated line per archive: user, name, started, ended, reason, messages.
    Reads only the ends of each file, so it stays fast on large archives.

    \b
    archiver list
    archiver list --user alice --since 2026-11-01 --json
    archiver list --reason timeout --until 2026-11-21T12:00Z --limit 20
    archiver list --damaged
    """
    journal = _journal(data_dir)
    if damaged:
        _list_damaged(journal, user, as_json)
        return
    with _errors():
        infos = archives.list_archives(
            journal, where=_filter(user, since, before, reason), limit=limit, on_error=_warn
        )
        with _Output() as out:
            if as_json:
                out.json_array(_info_json(i) for i in infos)
            else:
                for info in infos:
                    out.line(_info_line(info))
    if not infos:
        _nothing_found("no archive matches")


@main.command()
@click.argument("user_or_path")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the transcript as JSON.")
@data_option
def show(user_or_path: str, name: str | None, as_json: bool, data_dir: Path | None) -> None:
    """Show one dialog as a conversation, or as JSON.

    The archive NAME of user USER, the user's live dialog with NAME current.yaml, USER
    alone for their newest archive, or any dialog file by its PATH.

    \b
    archiver show alice 2026-11-21-10-30-00.yaml
    archiver show alice                  alice's newest archive
    archiver show alice current.yaml --json
    archiver show data/users/alice/dialogs/archived/2026-11-21-10-30-00.yaml
    """
    if name is None:
        path = _file_or_newest(user_or_path, data_dir)
    else:
        journal = _journal(data_dir)
        with _errors():
            archives.users_of(journal, user_or_path)
            if name == CURRENT:
                path = journal.layout.current_path(user_or_path)
                if not path.is_file():
                    raise Failure(f"user {user_or_path!r} has no live dialog")
            else:
                found = archives.find_archive(journal, user_or_path, name)
                if found is None:
                    raise Failure(f"no archive {name!r} for user {user_or_path!r}")
                path = found
    try:
        dialog = archives.read_dialog(path, live=path.name == CURRENT)
    except IsADirectoryError:
        raise Failure(f"{path} is a directory, not a dialog file") from None
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc.strerror}") from None
    except (JournalError, UnicodeDecodeError) as exc:
        raise Failure(f"{path} is not a dialog file: {exc}") from None
    with _errors():
        if as_json:
            click.echo(json.dumps(dialog.as_json(), ensure_ascii=False, indent=2))
        else:
            click.echo(render.render(dialog, style=click.style), nl=False)


def _file_or_newest(user_or_path: str, data_dir: Path | None) -> Path:
    """SHOW's one argument: a dialog file, else a user whose newest archive is meant."""
    path = Path(user_or_path)
    if path.exists():
        return path
    journal = _journal(data_dir)
    hint = f"list archives with: archiver list --user {shlex.quote(user_or_path)}"
    with _errors():
        try:
            archives.users_of(journal, user_or_path)
        except archives.UnknownUser:
            raise Failure(
                f"no file {user_or_path!r}, and no user {user_or_path!r} in "
                f"{journal.layout.data_dir}; {hint}"
            ) from None
        newest = archives.list_archives(journal, user_or_path, limit=1, on_error=_warn)
    if newest:
        found = archives.find_archive(journal, user_or_path, newest[0].name)
        if found is not None:
            return found
    live = journal.layout.current_path(user_or_path)
    if live.is_file():
        command = f"archiver show {shlex.quote(user_or_path)} current.yaml"
        raise Failure(f"user {user_or_path!r} has no archive yet; their live dialog: {command}")
    raise Failure(f"user {user_or_path!r} has no archive and no live dialog")


@main.command()
@click.argument("text")
@click.option("--regex", is_flag=True, help="TEXT is a Python regular expression (case-sensitive).")
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
    """Find messages containing TEXT (case-insensitive, any whitespace).

    Prints user, archive, seq, role and each matching line, newest archives first, the
    match highlighted on a terminal. Live dialogs are searched only with --current.

    \b
    archiver search refund
    archiver search "order #1042" --user alice --role user
    archiver search 'refund(ed|s)?\b' --regex --since 2026-11-01 --json
    archiver search invoice --current --limit 5

    With --json each element is {"user", "archive", "dialog", "seq", "role", "at", "text",
    "matches"}, "matches" holding [start, end] offsets into "text".
    """
    if not text:
        raise click.UsageError("TEXT is empty")
    try:
        query = searching.Query.compile(text, regex=regex)
    except Exception as exc:  # re.error, and the rare overflow/recursion of a huge pattern
        raise click.UsageError(f"bad regular expression: {exc}") from None
    journal = _journal(data_dir)
    with _errors():
        hits: Iterator[searching.Hit] = searching.search(
            journal,
            query,
            _filter(user, since, before, reason),
            role=role,
            current=current,
            on_error=_warn,
            workers=SEARCH_WORKERS,
        )
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


@main.command()
@click.option("--user", default=None, help="Only this user's archives.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@data_option
def watch(user: str | None, as_json: bool, data_dir: Path | None) -> None:
    """Print each archive the moment it lands, until Ctrl+C.

    Also sees archives written by other processes: servers sharing the data directory,
    `archiver sweep`. Lines are those of `archiver list`.

    \b
    archiver watch
    archiver watch --user alice --json | jq .reason
    """
    journal = _journal(data_dir)
    stop = threading.Event()
    with _errors(), contextlib.suppress(KeyboardInterrupt):
        landed = archives.watch_archives(journal, user, stop_event=stop, ready=_watching(journal))
        for info in landed:
            line = _to_json(_info_json(info)) if as_json else None
            click.echo(line or _info_line(info))


def _watching(journal: Journal) -> Callable[[], None]:
    def ready() -> None:
        click.echo(
            f"watching {journal.layout.users_dir} for new archives (Ctrl+C to stop)", err=True
        )

    return ready


@main.command()
@user_option
@since_option
@until_option
@reason_option
@data_option
def export(
    user: str | None,
    since: str | None,
    before: str | None,
    reason: str | None,
    data_dir: Path | None,
) -> None:
    """Print archives with their messages as JSON Lines.

    One object per archive, newest first: {"user", "name", "dialog", "started", "ended",
    "reason", "messages": [{"seq", "role", "at", "text"}, ...]}.

    \b
    archiver export > archives.jsonl
    archiver export --user alice --since 2026-11-01 --until 2026-11-30 > alice-nov.jsonl
    """
    journal = _journal(data_dir)
    count = 0
    with _errors(), _Output(batch=64) as out:
        for item in archives.export(journal, _filter(user, since, before, reason), _warn):
            out.line(_to_json(item))
            count += 1
    if not count:
        _nothing_found("no archive matches")


@main.command()
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Idle time that makes a dialog stale.  [default: ARCHIVER_SESSION_TIMEOUT, 300]",
)
@click.option(
    "--force", is_flag=True, help="Also archive dialogs a running server owns (may split a reply)."
)
@data_option
def sweep(older_than: float | None, force: bool, data_dir: Path | None) -> None:
    """Archive stale live dialogs now (reason timeout).

    For after a crash, or with no server running: every live dialog idle for SECONDS is
    archived. Takes the same per-user locks as the server, so it is safe while servers
    run; a dialog a running server owns is left to it (its reply may be streaming) unless
    --force, and how many were skipped is said on stderr. Exits 1 if nothing was stale.

    \b
    archiver sweep
    archiver sweep --older-than 0        archive every live dialog no server owns
    """
    settings = _settings(data_dir=data_dir)
    journal = _journal(settings.data_dir)
    journal.alive = partial(alive_in, instances_dir(settings.data_dir))
    idle = settings.session_timeout if older_than is None else older_than
    count = 0
    skipped: list[str] = []
    with _errors():
        for archived in archives.sweep(journal, idle, on_error=_warn, force=force, skipped=skipped):
            user = render.printable(archived.user)
            messages = archives.plural(archived.messages, "message")
            click.echo(f"archived {user} {archived.name} ({messages})")
            count += 1
    if skipped:
        dialogs = archives.plural(len(skipped), "dialog")
        click.echo(f"skipped {dialogs} a running server owns (--force archives them)", err=True)
    if not count:
        _nothing_found(f"no live dialog idle for {idle:g} s")


@main.command()
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    required=True,
    metavar="DAYS",
    help="Delete archives that ended more than DAYS ago.",
)
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted.")
@data_option
def prune(older_than: float, dry_run: bool, data_dir: Path | None) -> None:
    """Delete archives older than DAYS.

    Prints each archive that ended more than DAYS ago as it is deleted. Live dialogs are
    never touched. Exits 1 if no archive was that old.

    \b
    archiver prune --older-than 90 --dry-run
    archiver prune --older-than 90
    """
    journal = _journal(data_dir)
    verb = "would remove" if dry_run else "removed"
    count = 0
    with _errors():
        for pruned in archives.prune(journal, older_than, dry_run=dry_run):
            info = pruned.info
            user = render.printable(info.user)
            click.echo(f"{verb} {user} {info.name} (ended {archives.archive_time(info)})")
            count += 1
    counted = archives.plural(count, "archive")
    summary = f"{verb} {counted} older than {archives.plural(older_than, 'day')}"
    if not count:
        _nothing_found(summary)
    click.echo(summary, err=True)
