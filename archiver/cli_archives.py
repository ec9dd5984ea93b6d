"""The CLI's archive commands: list, show, watch, export, import, sweep, prune, rm.

They read the data directory directly, so they work with the server stopped; importing
this module (cli.py does) registers them on :data:`archiver.cli.main`. Only the CLI
imports the terminal rendering: the server never loads it. The search-index commands
(search, reindex, stats) are in cli_search.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import click

from . import archive_writes, archives, logs, render, transcripts
from .archives import ArchiveInfo
from .cli_search import index_after, indexed_listing
from .clikit import (
    Failure,
    _errors,
    _filter,
    _interactive,
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
from .errors import JournalError
from .index_listing import Row, row_of
from .journal import Journal
from .layout import CURRENT, instances_dir
from .logs import log
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
    Answered by the search index when there is one (brought up to date first), else
    from the ends of each file; either way it stays fast on large archives.

    \b
    archiver list
    archiver list --user alice --since 2026-11-01 --json
    archiver list --reason timeout --until 2026-11-21T12:00Z --limit 20
    archiver list --damaged
    """
    settings = _settings(data_dir=data_dir)
    journal = _journal(settings.data_dir)
    if damaged:
        _list_damaged(journal, user, as_json)
        return
    with _errors():
        where = _filter(user, since, before, reason)
        rows = indexed_listing(settings, journal, where, limit)
        if rows is None:
            infos = archives.list_archives(journal, where=where, limit=limit, on_error=_warn)
            rows = [row_of(i) for i in infos]
        click.echo(listing_text(rows, as_json), nl=False)
    if not rows:
        _nothing_found("no archive matches")


_LISTING_KEYS = ("user", "name", "dialog", "started", "ended", "reason", "messages")


def listing_text(rows: list[Row], as_json: bool) -> str:
    """What ``archiver list`` prints, built whole, column by column (one echo: click.echo
    flushes on every call; nothing per row in Python). Each line is :func:`_info_line`'s
    (the watch's); the JSON is an array of :func:`_info_json`'s objects, one a line, each
    as ``_to_json`` writes it. A column's values are JSON-encoded in one call, separated by
    a bare newline, which the encoder escapes in every string: splitting there gives each
    value's text. The pieces are then laid out interleaved and joined once."""
    if not rows:
        return "[]\n" if as_json else ""
    columns = list(zip(*rows, strict=True))
    values: list[Sequence[str]]
    if as_json:
        values = [_json_values(c) for c in columns]
        keys = [f", {json.dumps(k)}: " for k in _LISTING_KEYS]
        keys[0] = '},\n{"user": '
        ends = ("[\n{" + keys[0][4:], "}\n]\n")
    else:
        values = [list(map(_printable, columns[0])), columns[1]]
        values += [list(map(str, c)) for c in columns[3:]]  # str(None) is "None", as before
        keys = ["\n"] + ["\t"] * (len(values) - 1)
        ends = ("", "\n")
    width = 2 * len(values)
    pieces = [""] * (width * len(rows))
    for i, (key, column) in enumerate(zip(keys, values, strict=True)):
        pieces[2 * i :: width] = [key] * len(rows)
        pieces[2 * i + 1 :: width] = column
    pieces[0] = ends[0]
    return "".join(pieces) + ends[1]


def _json_values(column: Sequence[object]) -> list[str]:
    """Each value's JSON text, from one encoder call."""
    return json.dumps(column, ensure_ascii=False, separators=("\n", ": "))[1:-1].split("\n")


_printable = functools.lru_cache(maxsize=4096)(render.printable)  # a few users, many archives


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
@click.option("--user", default=None, help="Only this user's archives.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@data_option
def watch(user: str | None, as_json: bool, data_dir: Path | None) -> None:
    """Print each archive the moment it lands, until Ctrl+C (or SIGTERM).

    Also sees archives written by other processes: servers sharing the data directory,
    `archiver sweep`. Lines are those of `archiver list`.

    \b
    archiver watch
    archiver watch --user alice --json | jq .reason
    """
    journal = _journal(data_dir)
    stop = threading.Event()
    # SIGTERM (systemd, docker stop, kill) ends the watch as Ctrl+C does: exit 0.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
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
@click.option(
    "--format",
    "form",
    type=click.Choice(transcripts.FORMATS),
    default="jsonl",
    show_default=True,
    help="jsonl (for import), csv (a row per dialog), md or html (printable transcripts).",
)
@data_option
def export(
    user: str | None,
    since: str | None,
    before: str | None,
    reason: str | None,
    form: str,
    data_dir: Path | None,
) -> None:
    """Print archives: JSON Lines, CSV, Markdown or HTML.

    jsonl: one object per archive, newest first: {"user", "name", "dialog", "started",
    "ended", "reason", "messages": [{"seq", "role", "at", "text"}, ...]}, what `archiver
    import` reads back. csv: a header row, then one row per dialog (user, dialog, archive,
    started, ended, reason, message counts, first user message), RFC 4180. md and html:
    transcripts a person reads or prints (html is one self-contained page).

    \b
    archiver export > archives.jsonl
    archiver export --user alice --since 2026-11-01 --until 2026-11-30 > alice-nov.jsonl
    archiver export --format csv > dialogs.csv
    archiver export --user alice --format html > alice.html
    """
    journal = _journal(data_dir)
    where = _filter(user, since, before, reason)
    count = 0

    def counted() -> Iterator[transcripts.Transcript]:
        nonlocal count
        for info, dialog in archives.export_dialogs(journal, where, _warn):
            count += 1
            yield transcripts.Transcript(info.user, info.name, dialog)

    with _errors():
        if form == "jsonl":
            with _Output(batch=64) as out:
                for item in counted():
                    out.line(_to_json(archives.export_object(item.user, item.name, item.dialog)))
        else:
            _write_out(_formatted(form, counted()))
    if not count:
        _nothing_found("no archive matches")


def _formatted(form: str, items: Iterator[transcripts.Transcript]) -> Iterator[str]:
    if form == "csv":
        return transcripts.csv_lines(items)
    if form == "md":
        return transcripts.markdown_all(items)
    return transcripts.html_document(items)


def _write_out(pieces: Iterable[str]) -> None:
    """Text to stdout as bytes, exactly (CSV's CRLF stays CRLF), a batch at a time."""
    sys.stdout.flush()
    stream = sys.stdout.buffer
    held: list[bytes] = []
    for piece in pieces:
        held.append(piece.encode("utf-8"))
        if len(held) >= 256:
            stream.write(b"".join(held))
            held.clear()
    stream.write(b"".join(held))
    stream.flush()


@main.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@data_option
def import_(file: TextIO, data_dir: Path | None) -> None:
    """Write a JSON Lines export back as archives.

    Reads what `archiver export` printed (FILE, or - for stdin). Every line is checked
    first; if one cannot be read, or names a dialog the user already has (or another
    line has), nothing is written. Each archive is written whole, by a rename, under
    its exported name (the next free name of that second if it is taken): export,
    forget, import gives back the same files, byte for byte.

    \b
    archiver export --user alice > alice.jsonl
    archiver import alice.jsonl
    """
    settings = _settings(data_dir=data_dir)
    journal = _journal(settings.data_dir)
    items, problems = [], []
    for number, text in enumerate(file, start=1):
        if not text.strip():
            continue
        try:
            items.append(archive_writes.read_export_line(number, text))
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
    with _errors():
        problems += archive_writes.check_import(journal, items)
        if problems:
            shown = problems[:20] + (
                [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
            )
            raise Failure("nothing imported:\n" + "\n".join(shown))
        written = []
        try:
            for item in items:
                path = archive_writes.write_import(journal, item)
                written.append(path)
                click.echo(f"imported {render.printable(item.user)} {path.name}")
        except archive_writes.BadImport as exc:
            raise Failure(f"{exc} (the {len(written)} archives before it were imported)") from None
        finally:
            index_after(settings, written)
    if not items:
        _nothing_found("no archive in the file")
    click.echo(f"imported {archives.plural(len(written), 'archive')}", err=True)


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
    landed: list[Path] = []
    skipped: list[str] = []
    with _errors():
        for archived in archive_writes.sweep(
            journal, idle, on_error=_warn, force=force, skipped=skipped
        ):
            user = render.printable(archived.user)
            messages = archives.plural(archived.messages, "message")
            click.echo(f"archived {user} {archived.name} ({messages})")
            landed.append(archived.path)
            count += 1
    if skipped:
        dialogs = archives.plural(len(skipped), "dialog")
        click.echo(f"skipped {dialogs} a running server owns (--force archives them)", err=True)
    index_after(settings, landed)
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
    settings = _settings(data_dir=data_dir)
    journal = _journal(settings.data_dir)
    verb = "would remove" if dry_run else "removed"
    count = 0
    gone: list[Path] = []
    with _errors():
        for pruned in archive_writes.prune(journal, older_than, dry_run=dry_run):
            info = pruned.info
            user = render.printable(info.user)
            click.echo(f"{verb} {user} {info.name} (ended {archives.archive_time(info)})")
            gone.append(pruned.path)
            count += 1
    if not dry_run:
        index_after(settings, gone)
    counted = archives.plural(count, "archive")
    summary = f"{verb} {counted} older than {archives.plural(older_than, 'day')}"
    if not count:
        _nothing_found(summary)
    click.echo(summary, err=True)


@main.command()
@click.argument("user")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@data_option
def rm(user: str, name: str, yes: bool, data_dir: Path | None) -> None:
    """Delete one archive of USER, and its search index entries.

    Under the user's lock, as forget. Asks first unless --yes is given; without a
    terminal, --yes is required. Logs archive.deleted.

    \b
    archiver rm alice 2026-11-21-10-30-00.yaml
    archiver rm 'auth0|42' 2026-11-21-10-30-00.yaml --yes
    """
    settings = _settings(data_dir=data_dir)
    journal = _journal(settings.data_dir)
    with _errors():
        archives.users_of(journal, user)
        if archives.find_archive(journal, user, name) is None:
            raise Failure(f"no archive {name!r} for user {user!r}")
        if not yes:
            if not _interactive():
                raise click.UsageError("rm needs --yes when not run from a terminal")
            click.confirm(
                f"Delete archive {name} of user {user!r}? This cannot be undone", abort=True
            )
        try:
            done = archive_writes.remove_archive(journal, user, name)
        except archive_writes.NoSuchArchive as exc:
            raise Failure(str(exc)) from None
    index_after(settings, [done.path])
    with logs.for_command(settings):
        log.info("archive.deleted", user=user, name=name, dialog=done.dialog)
    click.echo(f"removed {render.printable(str(done.path))}")
