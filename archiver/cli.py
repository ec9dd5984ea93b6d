"""The ``archiver`` command: a thin layer over settings, the app and the journal.

Exit codes: 0 ok, 1 nothing found, 2 usage error (click's own).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import uvicorn

from . import __version__, auth, logs, review
from .config import ConfigError, Settings
from .journal import Journal, JournalError, parse_dialog

DEMO_USER = "demo"
DEMO_TTL = 24 * 3600


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(os.environ, **overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Data directory.  [env: ARCHIVER_DATA_DIR; default: ./data]",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="archiver")
def main() -> None:
    """Archive chat dialogs when their subscribers go away.

    \b
    archiver serve                      run the service on http://127.0.0.1:8000
    archiver token alice                print a token for user alice
    archiver list --user alice          list alice's archived dialogs
    archiver show alice 2026-11-21-10-30-00.yaml
    """


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # A graceful shutdown after SIGTERM is a clean exit: exit 0 instead of
            # uvicorn's re-raising the signal, which supervisors would read as "killed".
            self._captured_signals.clear()


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
    settings = _settings(
        host=host, port=port, data_dir=data_dir, forwarded_allow_ips=forwarded_allow_ips
    )
    settings = auth.resolve_settings(settings)
    logs.setup(settings)
    _print_demo_url(settings)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": settings.access_log,
        # Streams end at once on shutdown and replies are stopped; requests get at most
        # 60% of the budget, the archives the rest (Sessions.drain).
        "timeout_graceful_shutdown": max(0.5, settings.shutdown_timeout * 0.6),
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "lifespan": "on",
    }
    if reload:
        # The reloader imports the app in a child process, so pass settings by env.
        os.environ.update(_env_of(settings))
        uvicorn.run("archiver.app:from_env", factory=True, reload=True, **options)
        return
    from .app import create_app

    _Server(uvicorn.Config(create_app(settings), **options)).run()


def _env_of(settings: Settings) -> dict[str, str]:
    out = {"ARCHIVER_HOST": settings.host, "ARCHIVER_PORT": str(settings.port)}
    out["ARCHIVER_DATA_DIR"] = str(settings.data_dir)
    out["ARCHIVER_FORWARDED_ALLOW_IPS"] = settings.forwarded_allow_ips
    return out


def _print_demo_url(settings: Settings) -> None:
    if not settings.jwt_secret or not settings.jwt_algorithm.startswith("HS"):
        return
    token = auth.mint(settings, DEMO_USER, ttl=DEMO_TTL)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    # The token travels in the fragment, which browsers never send: it reaches no log.
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
    settings = auth.resolve_settings(_settings(data_dir=data_dir))
    if not settings.jwt_secret:
        raise click.ClickException(
            "tokens for RS256/ES256 are minted by whoever holds the private key"
        )
    click.echo(auth.mint(settings, user, admin=admin, ttl=ttl))


@main.command("list")
@click.option("--user", default=None, help="Only this user's archives.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@data_option
def list_(user: str | None, as_json: bool, data_dir: Path | None) -> None:
    """List archived dialogs, newest first.

    \b
    archiver list
    archiver list --user alice --json
    """
    journal = Journal(_settings(data_dir=data_dir).data_dir)
    infos = review.list_archives(journal, user)
    if as_json:
        click.echo(json.dumps([{"user": i.user, **i.as_json()} for i in infos], ensure_ascii=False))
    else:
        for i in infos:
            click.echo(f"{i.user}\t{i.name}\t{i.started}\t{i.ended}\t{i.reason}\t{i.messages}")
    if not infos:
        sys.exit(1)


@main.command()
@click.argument("user_or_path")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the transcript as JSON.")
@data_option
def show(user_or_path: str, name: str | None, as_json: bool, data_dir: Path | None) -> None:
    """Show one archived dialog as a conversation (or JSON).

    \b
    archiver show alice 2026-11-21-10-30-00.yaml
    archiver show data/users/alice/dialogs/archived/2026-11-21-10-30-00.yaml
    """
    if name is None:
        path = Path(user_or_path)
    else:
        journal = Journal(_settings(data_dir=data_dir).data_dir)
        try:
            found = review.find_archive(journal, user_or_path, name)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        if found is None:
            raise click.ClickException(f"no archive {name!r} for user {user_or_path!r}")
        path = found
    try:
        dialog = parse_dialog(path.read_bytes())
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    except (JournalError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path} is not a dialog file: {exc}") from None
    if as_json:
        click.echo(json.dumps(dialog.as_json(), ensure_ascii=False, indent=2))
    else:
        click.echo(review.render(dialog), nl=False)
