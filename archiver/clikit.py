"""The CLI's shared parts: the ``main`` group, its common options, errors and output.

cli.py (serve, token, forget), cli_archives.py (the archive commands) and cli_search.py
(search, reindex, stats) build on these; importing cli.py registers every command, in
:data:`COMMANDS` order.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__, archives
from .broker import BrokerUnavailable
from .config import ConfigError, Settings
from .dialogfile import REASONS
from .errors import JournalError
from .journal import Journal
from .layout import BadUserId

DEMO_USER = "demo"
DEMO_TTL = 24 * 3600
REFERENCE_WIDTH = 100  # columns of the CLI reference in docs/cli.md
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
    "import",
    "stats",
    "sweep",
    "prune",
    "rm",
    "forget",
]


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if name in self.commands]

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokerUnavailable as exc:  # `serve` with ARCHIVER_BROKER unreachable
            raise Failure(str(exc)) from None


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(os.environ, **overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _journal(data_dir: Path | None) -> Journal:
    """The journal of an existing data directory (review commands never create one)."""
    path = _settings(data_dir=data_dir).data_dir
    if not path.is_dir():
        raise Failure(f"no data directory {path} (set --data or ARCHIVER_DATA_DIR)")
    return Journal(path)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn what reading the data directory can raise into one clear line and an exit code."""
    try:
        yield
    except BrokenPipeError:
        _stdout_gone()
    except archives.UnknownUser as exc:
        raise Failure(str(exc)) from None
    except BadUserId as exc:
        raise click.UsageError(str(exc)) from None
    except JournalError as exc:
        raise Failure(exc.detail) from None
    except OSError as exc:
        detail = f"cannot read {exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        raise Failure(detail) from None


def _stdout_gone() -> NoReturn:
    # The reader went away (`archiver search x | head`): stop quietly, like grep.
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def _warn(path: Path, exc: Exception) -> None:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    click.echo(f"warning: skipped {path}: {detail}", err=True)


class Failure(click.ClickException):
    """An error (unreadable data, no such user): exit 2, as grep does, so that 1 means
    only "nothing found"."""

    exit_code = 2


def _nothing_found(note: str) -> NoReturn:
    click.echo(note, err=True)
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
            return None if value is None else archives.parse_time(value, end=end)
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
) -> archives.Filter:
    return archives.Filter(user=user, since=since, before=before, reason=reason)


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
    not. Exit codes, as grep's: 0 found, 1 nothing found (a note on stderr), 2 an error.
    """


def _interactive() -> bool:
    return sys.stdin.isatty()
