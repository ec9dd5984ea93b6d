"""The ``archiver`` command: a thin layer over settings, the app, the journal and review.

Exit codes: 0 ok, 1 nothing found (or an error, printed as one ``Error:`` line on
stderr), 2 usage error (click's own). The review commands read the data directory
directly, so they work with the server stopped. ``serve`` and ``token`` import uvicorn
and the JWT library only when they run: the review commands start faster without them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__, query, review
from .config import DEFAULT_DATA_DIR, ConfigError, Settings
from .index import Index
from .journal import CURRENT, REASONS, ROLES, ArchiveInfo, BadUserId, Journal, JournalError

DEMO_USER = "demo"
DEMO_TTL = 24 * 3600
REFERENCE_WIDTH = 100  # columns of the README's CLI reference
SEARCH_WORKERS = min(os.cpu_count() or 1, 4)  # processes reading files (large archives)
# The order commands appear in `archiver --help` and the README.
COMMANDS = [
    "serve",
    "token",
    "list",
    "show",
    "search",
    "reindex",
    "watch",
    "export",
    "sweep",
    "prune",
    "forget",
]


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if name in self.commands]


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(os.environ, **overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _journal(data_dir: Path | None) -> Journal:
    """The journal of an existing data directory (review commands never create one)."""
    path = _settings(data_dir=data_dir).data_dir
    if not path.is_dir():
        raise click.ClickException(f"no data directory {path} (set --data or ARCHIVER_DATA_DIR)")
    return Journal(path)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn what reading the data directory can raise into one clear line and an exit code."""
    try:
        yield
    except BrokenPipeError:
        _stdout_gone()
    except review.UnknownUser as exc:
        raise click.ClickException(str(exc)) from None
    except BadUserId as exc:
        raise click.UsageError(str(exc)) from None
    except JournalError as exc:
        raise click.ClickException(exc.detail) from None
    except OSError as exc:
        detail = f"cannot read {exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        raise click.ClickException(detail) from None


def _stdout_gone() -> NoReturn:
    # The reader went away (`archiver search x | head`): stop quietly, like grep.
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def _warn(path: Path, exc: Exception) -> None:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    click.echo(f"warning: skipped {path}: {detail}", err=True)


def _nothing_found() -> NoReturn:
    sys.exit(1)


# One encoder for every line: json.dumps with options builds a new one per call.
_to_json = json.JSONEncoder(ensure_ascii=False).encode


class _Output:
    """Lines for stdout, written in batches: click.echo flushes on every call, which at
    tens of thousands of lines costs more than finding them."""

    def __init__(self, batch: int = 512) -> None:
        self.batch = batch
        self.lines: list[str] = []

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def line(self, text: str) -> None:
        self.lines.append(text)
        if len(self.lines) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            click.echo("\n".join(self.lines))
            self.lines.clear()

    def json_array(self, items: Iterable[dict[str, Any]]) -> int:
        """A JSON array, one element per line; return how many elements."""
        count = 0
        held: str | None = None  # each element waits for the next to know its comma
        for item in items:
            self.line("[" if held is None else held + ",")
            held = _to_json(item)
            count += 1
        self.line("[]" if held is None else held + "\n]")
        return count


def _when(end: bool) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """An option callback: ``2026-11-21`` or an ISO time, as a UTC timestamp bound."""

    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        try:
            return None if value is None else review.parse_time(value, end=end)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return convert


data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Data directory.  [env: ARCHIVER_DATA_DIR; default: ./data]",
)
user_option = click.option("--user", default=None, help="Only this user's archives.")
since_option = click.option(
    "--since",
    metavar="DATE",
    callback=_when(end=False),
    help="Only archives that ended at or after DATE (2026-11-21 or an ISO time; UTC).",
)
until_option = click.option(
    "--until",
    "before",
    metavar="DATE",
    callback=_when(end=True),
    help="Only archives that ended at or before DATE (a date includes that whole day).",
)
reason_option = click.option(
    "--reason", type=click.Choice(REASONS), default=None, help="Only archives ended for REASON."
)


def _filter(
    user: str | None, since: str | None, before: str | None, reason: str | None
) -> review.Filter:
    return review.Filter(user=user, since=since, before=before, reason=reason)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="archiver")
def main() -> None:
    """Archive chat dialogs when their subscribers go away, and review the archives.

    \b
    archiver serve                      run the service on http://127.0.0.1:8000
    archiver token alice                print a token for user alice
    archiver list --user alice          list alice's archived dialogs
    archiver show alice 2026-11-21-10-30-00.yaml
    archiver search refund --since 2026-11-01
    archiver watch                      print archives as they land

    The review commands read the data directory directly, with the server running or
    not. Exit codes: 0 ok, 1 nothing found or an error, 2 usage error.
    """


@main.command()
@click.option(
    "--host", default=None, help="Interface to bind.  [env: ARCHIVER_HOST; default: 127.0.0.1]"
)
@click.option("--port", type=int, default=None, help="Port.  [env: ARCHIVER_PORT; default: 8000]")
@data_option
@click.option("--reload", is_flag=True, help="Restart when the code changes (development).")
@click.option(
    "--forwarded-allow-ips",
    default=None,
    help="Proxies whose X-Forwarded-* headers are trusted.  [env: ARCHIVER_FORWARDED_ALLOW_IPS]",
)
def serve(
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    reload: bool,
    forwarded_allow_ips: str | None,
) -> None:
    """Run the service (every option also reads an ARCHIVER_* variable).

    \b
    archiver serve
    archiver serve --port 9000 --data /var/lib/archiver
    ARCHIVER_DISCONNECT_GRACE=0 archiver serve
    """
    import uvicorn

    from . import auth, logs, redact

    settings = _settings(
        host=host, port=port, data_dir=data_dir, forwarded_allow_ips=forwarded_allow_ips
    )
    settings = auth.resolve_settings(settings)
    try:
        redact.load(settings.redact, settings.redact_file)
    except redact.RedactConfigError as exc:
        raise click.UsageError(str(exc)) from None
    logs.setup(settings)
    _print_demo_url(settings)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "lifespan": "on",
        # uvloop and httptools come with uvicorn[standard] (a dependency); name them so a
        # missing one shows up as an error here, not as a server that is quietly slower.
        "loop": "uvloop" if sys.platform != "win32" else "asyncio",
        "http": "httptools",
    }
    if reload:
        # The reloader imports the app in a child process, so pass settings by env.
        os.environ.update(_env_of(settings))
        package = str(Path(__file__).parent)
        uvicorn.run(
            "archiver.app:from_env", factory=True, reload=True, reload_dirs=[package], **options
        )
        return
    from .app import create_app

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                # A graceful shutdown after SIGTERM is a clean exit: exit 0 instead of
                # uvicorn's re-raising the signal, which supervisors would read as "killed".
                self._captured_signals.clear()

    config = uvicorn.Config(create_app(settings), **options)
    # Our own listening socket, so accepted connections inherit keepalive and a user
    # timeout (Linux copies them from the listener): a vanished peer cannot hold a stream.
    sock = config.bind_socket()
    bound_dead_peers(sock, settings.tcp_user_timeout)
    # bind_socket() already printed "Uvicorn running on ...": listen now, so a connection
    # made on reading it waits in the backlog for start-up instead of being refused.
    sock.listen(config.backlog)
    Server(config).run(sockets=[sock])


def bound_dead_peers(sock: socket.socket, user_timeout: float) -> None:
    """Drop a peer that stops acknowledging for ``user_timeout`` seconds.

    TCP_USER_TIMEOUT aborts a connection whose sent data (a ping, an event) stays
    unacknowledged that long; keepalive probes, from half of it on, cover a connection
    with nothing to send. Without them a peer that vanished without FIN/RST (a laptop
    that sleeps, a dropped route) holds its stream until TCP gives up: ~15 minutes.
    """
    if user_timeout <= 0:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", max(1, round(user_timeout / 2))),
        ("TCP_KEEPINTVL", max(1, round(user_timeout / 6))),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", max(1, round(user_timeout * 1000))),
    ):
        option = getattr(socket, name, None)
        if option is not None:  # Linux has them all; other systems some
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _env_of(settings: Settings) -> dict[str, str]:
    out = {"ARCHIVER_HOST": settings.host, "ARCHIVER_PORT": str(settings.port)}
    out["ARCHIVER_DATA_DIR"] = str(settings.data_dir)
    out["ARCHIVER_FORWARDED_ALLOW_IPS"] = settings.forwarded_allow_ips
    return out


def _print_demo_url(settings: Settings) -> None:
    from . import auth

    if not settings.jwt_secret or not settings.jwt_algorithm.startswith("HS"):
        return
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if not sys.stderr.isatty():
        # Under a supervisor stderr is a log (journald, docker logs): a 24-hour token
        # printed there is a credential anyone who reads the log can use.
        command = f"archiver token {DEMO_USER}"
        if settings.data_dir != DEFAULT_DATA_DIR:
            command += f" --data {settings.data_dir}"
        click.echo(
            f"Open the demo chat: http://{host}:{settings.port}/#token=<token from '{command}'>",
            err=True,
        )
        return
    token = auth.mint(settings, DEMO_USER, ttl=DEMO_TTL)
    # The token travels in the fragment, which browsers never send: it reaches no access log.
    click.echo(f"Open the demo chat (user {DEMO_USER!r}, token valid 24 h):", err=True)
    click.echo(f"    http://{host}:{settings.port}/#token={token}", err=True)


@main.command()
@click.argument("user")
@click.option("--admin", is_flag=True, help="Grant the admin role (review any user).")
@click.option("--ttl", type=float, default=3600, show_default=True, help="Seconds of validity.")
@data_option
def token(user: str, admin: bool, ttl: float, data_dir: Path | None) -> None:
    """Print a token for USER, signed with the configured or generated secret.

    \b
    archiver token alice
    archiver token ops --admin --ttl 600
    curl -H "Authorization: Bearer $(archiver token alice)" localhost:8000/dialog
    """
    from . import auth

    settings = auth.resolve_settings(_settings(data_dir=data_dir))
    if not settings.jwt_secret:
        raise click.ClickException(
            "tokens for RS256/ES256 are minted by whoever holds the private key"
        )
    click.echo(auth.mint(settings, user, admin=admin, ttl=ttl))


def _info_json(info: ArchiveInfo) -> dict[str, Any]:
    return {"user": info.user, **info.as_json()}


def _info_line(info: ArchiveInfo) -> str:
    fields = [review.printable(info.user), info.name, info.started, info.ended, info.reason]
    return "\t".join(str(f) for f in [*fields, info.messages])


@main.command("list")
@user_option
@since_option
@until_option
@reason_option
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, metavar="N", help="At most N archives."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@data_option
def list_(
    user: str | None,
    since: str | None,
    before: str | None,
    reason: str | None,
    limit: int | None,
    as_json: bool,
    data_dir: Path | None,
) -> None:
    """List archived dialogs, newest first.

    One tab-separated line per archive: user, name, started, ended, reason, messages.
    Reads only the ends of each file, so it stays fast on large archives.

    \b
    archiver list
    archiver list --user alice --since 2026-11-01 --json
    archiver list --reason timeout --until 2026-11-21T12:00Z --limit 20
    """
    journal = _journal(data_dir)
    with _errors():
        infos = review.list_archives(
            journal, where=_filter(user, since, before, reason), limit=limit, on_error=_warn
        )
        with _Output() as out:
            if as_json:
                out.json_array(_info_json(i) for i in infos)
            else:
                for info in infos:
                    out.line(_info_line(info))
    if not infos:
        _nothing_found()


@main.command()
@click.argument("user_or_path")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the transcript as JSON.")
@data_option
def show(user_or_path: str, name: str | None, as_json: bool, data_dir: Path | None) -> None:
    """Show one dialog as a conversation, or as JSON.

    The archive NAME of user USER, the user's live dialog with NAME current.yaml, or any
    dialog file by its PATH.

    \b
    archiver show alice 2026-11-21-10-30-00.yaml
    archiver show alice current.yaml --json
    archiver show data/users/alice/dialogs/archived/2026-11-21-10-30-00.yaml
    """
    if name is None:
        path = Path(user_or_path)
    else:
        journal = _journal(data_dir)
        with _errors():
            review.users_of(journal, user_or_path)
            if name == CURRENT:
                path = journal.current_path(user_or_path)
                if not path.is_file():
                    raise click.ClickException(f"user {user_or_path!r} has no live dialog")
            else:
                found = review.find_archive(journal, user_or_path, name)
                if found is None:
                    raise click.ClickException(f"no archive {name!r} for user {user_or_path!r}")
                path = found
    try:
        dialog = review.read_dialog(path, live=path.name == CURRENT)
    except IsADirectoryError:
        raise click.ClickException(f"{path} is a directory, not a dialog file") from None
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    except (JournalError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path} is not a dialog file: {exc}") from None
    with _errors():
        if as_json:
            click.echo(json.dumps(dialog.as_json(), ensure_ascii=False, indent=2))
        else:
            click.echo(review.render(dialog, style=click.style), nl=False)


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
    date on every search), best matches first; --scan reads every archive instead
    (newest first), with the same results.

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
        if regex:
            hits = _regex_hits(journal, text, _filter(user, since, before, reason), role, current)
        else:
            wanted = _search_query(text, user, since, before, role, reason)
            if wanted.user is not None:
                review.users_of(journal, wanted.user)  # an unknown user is an error
            hits = _query_hits(settings, journal, wanted, scan, current, limit)
        if limit is not None:
            hits = (hit for _, hit in zip(range(limit), hits, strict=False))
        with _Output() as out:
            if as_json:
                count = out.json_array(hit.as_json() for hit in hits)
            else:
                count = 0
                for hit in hits:
                    for line in review.hit_lines(hit, style=click.style):
                        out.line(line)
                    count += 1
    if not count:
        _nothing_found()


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
    journal: Journal, text: str, where: review.Filter, role: str | None, current: bool
) -> Iterator[review.Hit]:
    try:
        compiled = review.Query.compile(text, regex=True)
    except Exception as exc:  # re.error, and the rare overflow/recursion of a huge pattern
        raise click.UsageError(f"bad regular expression: {exc}") from None
    return review.search(
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
) -> Iterator[review.Hit]:
    if current:
        yield from query.scan_current(journal, wanted)
    searchable = None if scan or not settings.search_index else _fresh_index(settings)
    if searchable is None:
        yield from query.scan(journal, wanted, on_error=_warn)
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
    found = Index(settings.data_dir, settings.search_index_path)
    try:
        if not found.exists():
            click.echo("building the search index (once; later searches are fast)", err=True)
        found.sync()
    except (sqlite3.Error, OSError) as exc:
        click.echo(f"warning: search index unusable ({exc}); reading every archive", err=True)
        found.close()
        return None
    return found


def _index_after(settings: Settings, paths: Iterable[Path] = (), user: str | None = None) -> None:
    """Tell an existing index about archives this command wrote or deleted (it would
    catch up by itself later; this keeps it current at once). Never builds one."""
    found = Index(settings.data_dir, settings.search_index_path)
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
    found = Index(settings.data_dir, settings.search_index_path)
    try:
        done = found.rebuild()
        archives, messages = found.counts()
    except (sqlite3.Error, OSError) as exc:
        raise click.ClickException(f"cannot write the search index: {exc}") from None
    finally:
        found.close()
    click.echo(
        f"indexed {review.plural(archives, 'archive')} "
        f"({review.plural(messages, 'message')}) in {done.ms / 1000:.1f} s"
    )


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
        archives = review.watch_archives(journal, user, stop_event=stop, ready=_watching(journal))
        for info in archives:
            line = _to_json(_info_json(info)) if as_json else None
            click.echo(line or _info_line(info))


def _watching(journal: Journal) -> Callable[[], None]:
    def ready() -> None:
        click.echo(f"watching {journal.users_dir} for new archives (Ctrl+C to stop)", err=True)

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
        for item in review.export(journal, _filter(user, since, before, reason), _warn):
            out.line(_to_json(item))
            count += 1
    if not count:
        _nothing_found()


@main.command()
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Idle time that makes a dialog stale.  [default: ARCHIVER_SESSION_TIMEOUT, 300]",
)
@data_option
def sweep(older_than: float | None, data_dir: Path | None) -> None:
    """Archive stale live dialogs now (reason timeout).

    For after a crash, or with no server running: every live dialog idle for SECONDS is
    archived. Takes the same per-user locks as the server, so it is safe while servers
    run. Exits 1 if nothing was stale.

    \b
    archiver sweep
    archiver sweep --older-than 0        archive every live dialog
    """
    settings = _settings(data_dir=data_dir)
    journal = _journal(settings.data_dir)
    idle = settings.session_timeout if older_than is None else older_than
    count = 0
    landed: list[Path] = []
    with _errors():
        for archived in review.sweep(journal, idle, on_error=_warn):
            user = review.printable(archived.user)
            messages = review.plural(archived.messages, "message")
            click.echo(f"archived {user} {archived.name} ({messages})")
            landed.append(archived.path)
            count += 1
    _index_after(settings, landed)
    if not count:
        click.echo(f"no live dialog idle for {idle:g} s", err=True)
        _nothing_found()


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
        for pruned in review.prune(journal, older_than, dry_run=dry_run):
            info = pruned.info
            user = review.printable(info.user)
            click.echo(f"{verb} {user} {info.name} (ended {review.archive_time(info)})")
            gone.append(pruned.path)
            count += 1
    if not dry_run:
        _index_after(settings, gone)
    archives = review.plural(count, "archive")
    click.echo(f"{verb} {archives} older than {review.plural(older_than, 'day')}", err=True)
    if not count:
        _nothing_found()


def _interactive() -> bool:
    return sys.stdin.isatty()


@main.command()
@click.argument("user")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@data_option
def forget(user: str, yes: bool, data_dir: Path | None) -> None:
    """Erase everything stored for USER.

    Removes the live dialog, every archive, torn side files, the lock and the user's
    directory, under the user's lock, printing each file removed. Asks first unless
    --yes is given; without a terminal, --yes is required.

    \b
    archiver forget alice
    archiver forget 'auth0|42' --yes
    """
    settings = _settings(data_dir=data_dir)
    journal = _journal(settings.data_dir)
    with _errors():
        files = review.user_contents(journal, user)
        if not yes:
            if not _interactive():
                raise click.UsageError("forget needs --yes when not run from a terminal")
            archives = sum(1 for f in files if f.parent.name == "archived")
            click.confirm(
                f"Erase all {len(files)} files of user {user!r} ({archives} archives)?"
                " This cannot be undone",
                abort=True,
            )
        done = review.forget(journal, user)
        for path in done.files:
            click.echo(f"removed {review.printable(str(path))}")
    _index_after(settings, user=user)
    click.echo(f"forgot user {review.printable(user)!r}: {done.summary()}", err=True)


# ---------------------------------------------------------------------------------------
# The README's CLI reference


def cli_reference(width: int = REFERENCE_WIDTH) -> str:
    """Every command's ``--help`` as Markdown, for the README (checked by a test)."""
    blocks = []
    root = click.Context(
        main,
        info_name="archiver",
        terminal_width=width,
        max_content_width=width,
        **main.context_settings,
    )
    with root:
        blocks.append(("archiver", main.get_help(root)))
        for name in COMMANDS:
            command = main.commands[name]
            with click.Context(command, info_name=name, parent=root) as ctx:
                blocks.append((f"archiver {name}", command.get_help(ctx)))
    return "\n".join(f"#### `{title}`\n\n```\n{text}\n```\n" for title, text in blocks)
