"""The ``archiver`` command: a thin layer over settings, the app, the journal and archives.

Exit codes follow grep: 0 found (or done), 1 nothing found (with a one-line note on
stderr), 2 an error (one ``Error:`` line on stderr) or a usage error (click's own).
The review commands read the data directory directly, so they work with the server
stopped. ``serve`` and ``token`` import uvicorn and the JWT library only when they run:
the review commands start faster without them.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from . import (
    archive_writes,
    cli_archives,  # noqa: F401 (importing it registers the archive commands on main)
    cli_search,  # and the search-index commands
    render,
)
from .clikit import (
    COMMANDS,
    DEMO_TTL,
    DEMO_USER,
    REFERENCE_WIDTH,
    Failure,
    _errors,
    _interactive,
    _journal,
    _settings,
    data_option,
    main,
)
from .config import Settings
from .layout import ARCHIVED, secret_path

__all__ = ["COMMANDS", "REFERENCE_WIDTH", "cli_reference", "main"]


@main.command()
@click.option(
    "--host", default=None, help="Interface to bind.  [env: ARCHIVER_HOST; default: 127.0.0.1]"
)
@click.option("--port", type=int, default=None, help="Port.  [env: ARCHIVER_PORT; default: 8000]")
@data_option
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes serving the port; more than 1 needs ARCHIVER_BROKER (Redis).  "
    "[env: ARCHIVER_WORKERS; default: 1]",
)
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
    workers: int | None,
    reload: bool,
    forwarded_allow_ips: str | None,
) -> None:
    """Run the service (every option also reads an ARCHIVER_* variable).

    \b
    archiver serve
    archiver serve --port 9000 --data /var/lib/archiver
    ARCHIVER_BROKER=redis://127.0.0.1:6379/0 archiver serve --workers 4
    ARCHIVER_DISCONNECT_GRACE=0 archiver serve
    """
    from . import auth, logs, redact, serving

    settings = _settings(
        host=host,
        port=port,
        data_dir=data_dir,
        workers=workers,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    refused = serving.refusal(settings)
    if refused is not None:
        raise Failure(refused)
    if reload and settings.workers > 1:
        raise Failure("--reload runs one process: drop --workers (or ARCHIVER_WORKERS)")
    settings = auth.resolve_settings(settings)
    try:
        redact.load(settings.redact, settings.redact_file)
    except redact.RedactConfigError as exc:
        raise click.UsageError(str(exc)) from None
    logs.setup(settings)
    _print_demo_url(settings)
    if reload:
        import uvicorn

        # The reloader imports the app in a child process, so pass settings by env.
        os.environ.update(_env_of(settings))
        package = str(Path(__file__).parent)
        uvicorn.run(
            "archiver.app:from_env",
            factory=True,
            reload=True,
            reload_dirs=[package],
            **serving.uvicorn_options(settings),
        )
        return
    serving.serve(settings)


def _env_of(settings: Settings) -> dict[str, str]:
    out = {"ARCHIVER_HOST": settings.host, "ARCHIVER_PORT": str(settings.port)}
    out["ARCHIVER_DATA_DIR"] = str(settings.data_dir)
    out["ARCHIVER_FORWARDED_ALLOW_IPS"] = settings.forwarded_allow_ips
    return out


def _print_demo_url(settings: Settings) -> None:
    from . import auth
    from .logs import log

    if not settings.jwt_secret or not settings.jwt_algorithm.startswith("HS"):
        return
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if not sys.stderr.isatty():
        # Under a supervisor stderr is a log (journald, docker logs): a 24-hour token
        # printed there is a credential anyone who reads the log can use. So the line is
        # an event like every other (logfmt), and names the command that makes a token,
        # with the data directory whose secret the server uses.
        command = f"archiver token {DEMO_USER} --data {shlex.quote(str(settings.data_dir))}"
        url = f"http://{host}:{settings.port}/"
        # The page takes the token in its fragment: <url>#token=<what the command prints>.
        log.info("server.demo", url=url, token_command=command)
        return
    token = auth.mint(settings, DEMO_USER, ttl=DEMO_TTL)
    # The token travels in the fragment, which browsers never send: it reaches no access log.
    click.echo(f"Open the demo chat (user {DEMO_USER!r}, token valid 24 h):", err=True)
    click.echo(f"    http://{host}:{settings.port}/#token={token}", err=True)


@main.command()
@click.argument("user")
@click.option("--admin", is_flag=True, help="Grant the admin role (review any user).")
@click.option(
    "--ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=3600,
    show_default=True,
    help="Seconds of validity (more than 0).",
)
@data_option
def token(user: str, admin: bool, ttl: float, data_dir: Path | None) -> None:
    """Print a token for USER, signed with the server's secret.

    The secret is ARCHIVER_JWT_SECRET, or the one generated into the data directory. Says
    on stderr which secret signed it: a token only works on a server that uses the
    same secret, that is the same ARCHIVER_JWT_SECRET or the same data directory.

    \b
    archiver token alice
    archiver token ops --admin --ttl 600
    curl -H "Authorization: Bearer $(archiver token alice)" localhost:8000/dialog
    """
    from . import auth

    settings = _settings(data_dir=data_dir)
    if not settings.jwt_secret and not settings.jwt_algorithm.startswith("HS"):
        raise Failure("tokens for RS256/ES256 are minted by whoever holds the private key")
    secret_file = secret_path(settings.data_dir)
    generated = not settings.jwt_secret
    existed = secret_file.exists()
    settings = auth.resolve_settings(settings)
    click.echo(auth.mint(settings, user, admin=admin, ttl=ttl))
    if not generated:
        click.echo("signed with ARCHIVER_JWT_SECRET", err=True)
    elif existed:
        click.echo(f"signed with the secret in {secret_file}", err=True)
    else:
        click.echo(
            f"WARNING: created a new secret in {secret_file}: no server has used this data "
            "directory yet, so a server started with another data directory refuses this "
            "token. Pass the server's directory with --data (or ARCHIVER_DATA_DIR).",
            err=True,
        )


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
        files = archive_writes.user_contents(journal, user)
        if not yes:
            if not _interactive():
                raise click.UsageError("forget needs --yes when not run from a terminal")
            in_archive = sum(1 for f in files if f.parent.name == ARCHIVED)
            click.confirm(
                f"Erase all {len(files)} files of user {user!r} ({in_archive} archives)?"
                " This cannot be undone",
                abort=True,
            )
        done = archive_writes.forget(journal, user)
        for path in done.files:
            click.echo(f"removed {render.printable(str(path))}")
    cli_search.index_after(settings, user=user)
    click.echo(f"forgot user {render.printable(user)!r}: {done.summary()}", err=True)


# ---------------------------------------------------------------------------------------
# The README's CLI reference


def cli_reference(width: int = REFERENCE_WIDTH) -> str:
    """Every command's ``--help`` as Markdown, for docs/cli.md (checked by a test)."""
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
