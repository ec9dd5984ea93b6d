"""The broker: what instances of the service share, behind one seam with two backends.

In the manner of the ``broadcaster`` library: :class:`Broker` is the interface, and its
memory backend (this module) is today's single process: fan-out is the in-process hub,
presence is the hub's connections (``presence.py`` keeps the grace timers), liveness is
the data directory's instance locks (``owners.py``). ``ARCHIVER_BROKER=redis://...``
selects :class:`~archiver.redis_broker.RedisBroker` instead (imported only then, so
nothing needs installing for the default): presence, live fan-out, instance liveness and
reply ownership shared by every instance, so any instance serves any request.

What a broker answers, for the policies above it (sessions, chats, archiving):

* ``publish(user, event)``: every stream of ``user`` here at once (in-process, so local
  users keep working whatever happens to a shared broker), and on the other instances.
* ``joined(user)`` / ``left(user)``: the user's first connection here opened, their last
  one closed; ``listening(user)`` waits until events from other instances reach here.
* ``gone_everywhere(user)``: True if the user has no connection on any instance; None if
  that cannot be known now (a lost Redis): then no disconnect archive fires.
* ``alive(owner)``: is the instance ``owner`` running? (sync and thread-safe: the journal
  asks it under a user's ``flock``, in a worker thread.)
* ``acquire(user, kind)`` / ``release(user)``: which instance is streaming a reply into
  (or archiving) the user's dialog, so an archive anywhere waits for a reply anywhere.
* ``use_ticket(nonce, seconds)``: True the first time any instance redeems a stream
  ticket (tickets.py keeps each process's own record; memory adds nothing to it).
* ``shared``: False for memory, where instances on one data directory meet only through
  routing (hence ``session.moved``, archiving.py); True when the broker spans instances.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Literal

from anyio.abc import TaskGroup

from .config import Settings, redacted_url
from .hub import Event, Hub
from .owners import Instance

ClaimKind = Literal["reply", "archive"]
OnDead = Callable[[str], Coroutine[Any, Any, None]]


class BrokerUnavailable(Exception):
    """The configured broker cannot be reached at start-up: the server refuses to start.
    The message names the URL with any password hidden, and the error."""


class Broker:
    """The interface, and the memory backend: one process, as without a broker."""

    name = "memory"
    shared = False

    def __init__(self, hub: Hub, instance: Instance | None) -> None:
        self.hub = hub
        self.instance = instance
        self.id = instance.id if instance is not None else "-"

    async def start(self, task_group: TaskGroup, on_dead: OnDead) -> None:
        """Connect, and run the background work (renewals, listeners) in ``task_group``.
        ``on_dead(instance)`` is called once in the cluster for each instance found dead."""

    async def close(self) -> None:
        """Leave the cluster cleanly (a clean exit is no death to recover from)."""

    @property
    def lost(self) -> bool:
        return False

    def peers(self) -> int:
        """How many other instances are alive (as last seen)."""
        return 0

    async def leaving(self) -> None:
        """This instance has begun to shut down: the others stop counting it as a peer
        a user could reconnect to (:meth:`peers_staying`)."""

    async def peers_staying(self) -> int:
        """How many other live instances are not shutting down, asked now (0 if the
        broker cannot be asked)."""
        return 0

    # -- fan-out ------------------------------------------------------------------------

    def publish(self, user: str, event: Event) -> int:
        """Give ``event`` to every stream of ``user``; return how many here took it."""
        return self.hub.publish(user, event)

    # -- presence -----------------------------------------------------------------------

    def joined(self, user: str) -> None:
        """The user's first connection on this instance opened."""

    def left(self, user: str) -> None:
        """The user's last connection on this instance closed."""

    async def listening(self, user: str) -> None:
        """Until events of ``user`` published on other instances reach this one."""

    async def gone_everywhere(self, user: str) -> bool | None:
        """True if ``user`` has no connection anywhere; None if that cannot be known now."""
        return not self.hub.count(user)

    async def present_elsewhere(self, users: list[str]) -> set[str] | None:
        """Which of ``users`` have a connection on another instance (None: unknown)."""
        return set()

    # -- liveness and ownership ---------------------------------------------------------

    def alive(self, owner: str) -> bool:
        """Is the instance ``owner`` running (this one included)? Thread-safe."""
        return self.instance is not None and self.instance.alive(owner)

    async def acquire(self, user: str, kind: ClaimKind) -> bool:
        """Claim the user's dialog for a reply or an archive; wait while another instance
        archives it, or (an archive) replies into it. False: a reply streams elsewhere."""
        return True

    async def release(self, user: str) -> None:
        """Give up the claim :meth:`acquire` made."""

    async def acquire_all(self, users: list[str]) -> list[str]:
        """Claim many dialogs for archiving at once (a shutdown): the users claimed;
        those another instance holds are left to it, and those a reply of this instance
        still holds are waited for."""
        return users

    async def release_all(self, users: list[str]) -> None:
        """Give up the claims :meth:`acquire_all` made."""

    # -- stream tickets -----------------------------------------------------------------

    async def use_ticket(self, nonce: str, seconds: float) -> bool:
        """True if no other instance redeemed the ticket ``nonce`` (good ``seconds`` more).
        One process: its own record (tickets.py) is the whole truth."""
        return True

    def health(self) -> dict[str, Any]:
        return {"name": self.name, "state": "ok"}


def make_broker(settings: Settings, hub: Hub, instance: Instance) -> Broker:
    """The broker ``ARCHIVER_BROKER`` names; Redis is imported only when configured."""
    if settings.broker == "memory":
        return Broker(hub, instance)
    from .redis_broker import RedisBroker

    return RedisBroker(settings, hub, instance)


def preflight(settings: Settings) -> None:
    """Refuse to start (:class:`BrokerUnavailable`) if the configured broker is unreachable:
    before the server binds, so the refusal is one line and a non-zero exit."""
    if settings.broker == "memory":
        return
    import redis

    client = redis.Redis.from_url(
        settings.broker, socket_connect_timeout=3, socket_timeout=3, retry=None
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(
            f"ARCHIVER_BROKER {redacted_url(settings.broker)} is unreachable: "
            f"{type(exc).__name__}: {redact_error(str(exc), settings.broker)}"
        ) from None
    finally:
        client.close()


def redact_error(text: str, url: str) -> str:
    """An error's text with the URL (should it quote it) shown without its password."""
    return text.replace(url, redacted_url(url)).replace("\n", " ")
