"""Settings: one frozen dataclass, built once at the edge from a mapping (the environment).

Nothing else in the package reads ``os.environ``. The CLI passes its flags as overrides,
so `archiver serve --port 9000` and `ARCHIVER_PORT=9000 archiver serve` mean the same.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

FsyncPolicy = Literal["always", "everysec", "no"]
LogFormat = Literal["logfmt", "json"]
Upstream = Literal["echo", "openai", "n8n"]

DEFAULT_DATA_DIR = Path("data")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_SESSION_TIMEOUT = 300.0
DEFAULT_SWEEP_INTERVAL = 30.0
DEFAULT_DISCONNECT_GRACE = 5.0
DEFAULT_PING_INTERVAL = 15.0
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 65536
DEFAULT_ECHO_DELAY = 0.05
DEFAULT_SEND_TIMEOUT = 30.0
DEFAULT_TCP_USER_TIMEOUT = 30.0
DEFAULT_UPSTREAM_TIMEOUT = 60.0
DEFAULT_HISTORY_MESSAGES = 20
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_COOLDOWN = 30.0
DEFAULT_RATE_LIMIT = 60.0
DEFAULT_MAX_STREAMS_PER_USER = 10  # a browser holds 6 per origin, plus a few to spare
DEFAULT_MAX_STREAMS_PER_IP = 100  # a school or office behind one NAT address
# Stream handshakes of one address in flight at once (frontdoor.py); the rest wait their
# turn. A browser opens one stream per tab, so an office behind one NAT address rarely
# has more than a few handshakes at the same instant; each lasts about a millisecond.
DEFAULT_HANDSHAKES_PER_IP = 4
DEFAULT_RATE_LIMIT_PER_IP = 600.0  # chats and new streams a minute, one address
DEFAULT_BODY_TIMEOUT = 10.0
DEFAULT_GUEST_TTL = 3600.0
DEFAULT_GUEST_RATE_PER_IP = 10.0
DEFAULT_BROKER_LEASE = 10.0

ENV_PREFIX = "ARCHIVER_"

# Test-only crash points of the journal (ARCHIVER_FAULT_POINT, see journal.Fault): the
# process SIGKILLs itself there, so crash tests hit each step of a write deterministically.
FAULT_POINTS = (
    "append.reserved",  # disk space reserved, nothing written yet
    "append.torn",  # only part of the entry written
    "append.written",  # the entry written, the chat not yet answered
    "archive.reserved",  # space for the trailer reserved
    "archive.torn",  # only part of the trailer written
    "archive.trailed",  # trailer written and synced, not yet renamed
    "archive.copy_written",  # (redaction) the redacted copy written, not yet renamed
    "archive.copied",  # (redaction) the copy renamed into archived/, journal not yet removed
    "archive.linked",  # (link+unlink fallback, forced) linked into archived/, not yet unlinked
    "archive.renamed",  # renamed into archived/, directories not yet synced
    "repair.aside",  # a torn tail copied to its side file, the journal not yet cut back
    "repair.cut",  # between the two writes that cut a torn journal back
)


BROKER_SCHEMES = ("redis://", "rediss://", "unix://")


def redacted_url(url: str) -> str:
    """The URL as a log line or an error may show it: any password replaced by ``***``."""
    return re.sub(r"(?<=://)([^/@:]*):[^/@]*@", r"\1:***@", url)


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    jwt_secret: str | None = field(default=None, repr=False)
    # PEM text, or a path to a PEM file, of the public key for RS256/ES256 tokens.
    jwt_public_key: str | None = field(default=None, repr=False)
    # Pinned by configuration, never taken from the token's header.
    jwt_algorithm: str = "HS256"
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    disconnect_grace: float = DEFAULT_DISCONNECT_GRACE
    ping_interval: float = DEFAULT_PING_INTERVAL
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    # How long a connection may go unanswered (unacknowledged data, or keepalive probes
    # after half of it) before the kernel drops it: bounds a peer that vanished without
    # FIN/RST. 0 leaves the kernel's defaults (minutes).
    tcp_user_timeout: float = DEFAULT_TCP_USER_TIMEOUT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    fsync: FsyncPolicy = "everysec"
    log_format: LogFormat = "logfmt"
    log_file: Path | None = None
    log_level: str = "INFO"
    access_log: bool = True
    forwarded_allow_ips: str = "127.0.0.1"
    allowed_origins: tuple[str, ...] = ()
    upstream: Upstream = "echo"
    echo_delay: float = DEFAULT_ECHO_DELAY
    upstream_url: str | None = None
    upstream_model: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    # Signs the short-lived `jwt_token` sent to an n8n webhook; never the users' secret.
    upstream_jwt_secret: str | None = field(default=None, repr=False)
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    system_prompt: str | None = None
    history_messages: int = DEFAULT_HISTORY_MESSAGES
    breaker_failures: int = DEFAULT_BREAKER_FAILURES
    breaker_cooldown: float = DEFAULT_BREAKER_COOLDOWN
    # Chats per minute per user (a token bucket holding one minute's worth); 0 turns it off.
    rate_limit: float = DEFAULT_RATE_LIMIT
    # Admission (admission.py): per user, per client address, per process; 0 turns each off.
    max_streams_per_user: int = DEFAULT_MAX_STREAMS_PER_USER
    max_streams_per_ip: int = DEFAULT_MAX_STREAMS_PER_IP
    rate_limit_per_ip: float = DEFAULT_RATE_LIMIT_PER_IP
    handshakes_per_ip: int = DEFAULT_HANDSHAKES_PER_IP
    # None: a margin below the process's descriptor limit (resolved_max_connections).
    max_connections: int | None = None
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    # Guest sessions (guests.py): POST /session mints tokens for anonymous visitors.
    guest_sessions: bool = False
    guest_ttl: float = DEFAULT_GUEST_TTL
    guest_rate_per_ip: float = DEFAULT_GUEST_RATE_PER_IP
    # Archives older than this many days are deleted by the sweeper; 0 keeps them forever.
    retention_days: float = 0
    # Built-in redactions applied to archives (email, phone, card), and a file of more.
    redact: tuple[str, ...] = ()
    redact_file: Path | None = None
    # The full-text search index (archiver.index): derived from the archives, so it can
    # be turned off (an instance on a shared data directory that is not the review host)
    # or placed elsewhere (local disk when the data directory is on NFS).
    search_index: bool = True
    index_path: Path | None = None
    # "memory" (one process, nothing to install) or a Redis URL (redis://, rediss://,
    # unix://) shared by every instance: presence, live fan-out, liveness (#15).
    broker: str = field(default="memory", repr=False)  # a URL may carry a password
    # Seconds an instance's registration in the broker lasts unless renewed (every third
    # of it): a dead instance's connections leave presence, and its claims expire, within it.
    broker_lease: float = DEFAULT_BROKER_LEASE
    # Processes of `archiver serve` on one port (serving.py); more than 1 needs a broker.
    workers: int = 1
    # Test-only: "<point>[@<nth>][#<bytes>]" SIGKILLs the process the nth time the journal
    # reaches <point> (FAULT_POINTS); a *.torn point first writes only <bytes> of the write.
    fault_point: str | None = None

    def __post_init__(self) -> None:
        # Resolved once, here: watchfiles reports absolute paths, log lines and hints name
        # the directory a reader can use from anywhere, and `./data` means the directory
        # the process started in even if something changes the working directory later.
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from ``ARCHIVER_*`` variables, then apply non-None overrides."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, f.type, raw)
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("session_timeout", "sweep_interval", "ping_interval", "shutdown_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be greater than 0")
        if self.tcp_user_timeout < 0:
            raise ConfigError("ARCHIVER_TCP_USER_TIMEOUT must be >= 0 (0: the kernel's defaults)")
        if self.disconnect_grace < 0 or self.echo_delay < 0:
            raise ConfigError("ARCHIVER_DISCONNECT_GRACE and ARCHIVER_ECHO_DELAY must be >= 0")
        if self.upstream != "echo" and not self.upstream_url:
            raise ConfigError(f"ARCHIVER_UPSTREAM={self.upstream} needs ARCHIVER_UPSTREAM_URL")
        if self.upstream == "openai" and not self.upstream_model:
            raise ConfigError("ARCHIVER_UPSTREAM=openai needs ARCHIVER_UPSTREAM_MODEL")
        if self.upstream_timeout <= 0 or self.breaker_cooldown <= 0:
            raise ConfigError("ARCHIVER_UPSTREAM_TIMEOUT and ARCHIVER_BREAKER_COOLDOWN must be > 0")
        if self.history_messages < 1 or self.breaker_failures < 1 or self.rate_limit < 0:
            raise ConfigError(
                "ARCHIVER_HISTORY_MESSAGES and ARCHIVER_BREAKER_FAILURES must be >= 1, "
                "ARCHIVER_RATE_LIMIT >= 0"
            )
        if self.fault_point is not None:
            point = self.fault_point.split("@")[0].split("#")[0]
            if point not in FAULT_POINTS or not re.fullmatch(
                r"[a-z._]+(@[1-9]\d*)?(#[1-9]\d*)?", self.fault_point
            ):
                raise ConfigError(
                    "ARCHIVER_FAULT_POINT must be <point>[@<nth>][#<bytes>] with a point of "
                    + ", ".join(FAULT_POINTS)
                )
        caps = (self.max_streams_per_user, self.max_streams_per_ip, self.handshakes_per_ip)
        if min(*caps, self.max_connections or 0) < 0:
            raise ConfigError(
                "ARCHIVER_MAX_STREAMS_PER_USER, ARCHIVER_MAX_STREAMS_PER_IP, "
                "ARCHIVER_HANDSHAKES_PER_IP and ARCHIVER_MAX_CONNECTIONS must be >= 0 "
                "(0: no limit)"
            )
        if self.rate_limit_per_ip < 0 or self.guest_rate_per_ip < 0:
            raise ConfigError(
                "ARCHIVER_RATE_LIMIT_PER_IP and ARCHIVER_GUEST_RATE_PER_IP must be >= 0"
            )
        if self.body_timeout <= 0 or self.guest_ttl < 60:
            raise ConfigError(
                "ARCHIVER_BODY_TIMEOUT must be > 0 and ARCHIVER_GUEST_TTL at least 60 seconds"
            )
        if self.broker != "memory" and not self.broker.startswith(BROKER_SCHEMES):
            raise ConfigError(
                "ARCHIVER_BROKER must be memory or a Redis URL (redis://host:port/db, "
                f"rediss://..., unix:///path), not {redacted_url(self.broker)!r}"
            )
        if self.broker_lease < 0.3:
            raise ConfigError("ARCHIVER_BROKER_LEASE must be at least 0.3 seconds")
        if self.workers < 1:
            raise ConfigError("ARCHIVER_WORKERS must be at least 1")
        if self.max_message_bytes < 1:
            raise ConfigError("ARCHIVER_MAX_MESSAGE_BYTES must be at least 1")
        if self.jwt_algorithm.startswith("HS") and self.jwt_public_key:
            raise ConfigError(
                "ARCHIVER_JWT_PUBLIC_KEY is set but ARCHIVER_JWT_ALGORITHM is "
                f"{self.jwt_algorithm}; set it to RS256 or ES256"
            )
        if not self.jwt_algorithm.startswith("HS") and not self.jwt_public_key:
            raise ConfigError(
                f"ARCHIVER_JWT_ALGORITHM={self.jwt_algorithm} needs ARCHIVER_JWT_PUBLIC_KEY"
            )

    def resolved_max_connections(self) -> int:
        """ARCHIVER_MAX_CONNECTIONS, or a margin below the soft descriptor limit: the
        descriptors left keep /health, /metrics, chats and the journal working."""
        if self.max_connections is not None:
            return self.max_connections
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return 0
        return max(64, soft - max(100, soft // 10))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False}
_BOOL |= {"no": False, "off": False}


def _parse(name: str, type_: Any, raw: str) -> Any:
    """Turn one environment string into the field's type, with an error naming the variable."""
    var = ENV_PREFIX + name.upper()
    type_name = str(type_)
    try:
        if type_name in ("Path", "Path | None"):
            return Path(raw)
        if type_name in ("int", "int | None"):
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "bool":
            return _BOOL[raw.strip().lower()]
        if type_name == "tuple[str, ...]":
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        literal = _LITERALS.get(type_name)
        if literal is not None:
            if raw not in literal:
                raise ConfigError(f"{var} must be one of {', '.join(literal)}, not {raw!r}")
            return raw
        return raw
    except (ValueError, KeyError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{var}={raw!r} is not a valid {type_name}") from None


_LITERALS: dict[str, tuple[str, ...]] = {
    "FsyncPolicy": get_args(FsyncPolicy),
    "LogFormat": get_args(LogFormat),
    "Upstream": get_args(Upstream),
}
