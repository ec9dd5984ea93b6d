"""The Redis backend of the broker: the connection, the instance's lease, lost and
recovered, liveness of the other instances and the claims on a user's dialog.

* **Lease.** Every ``ARCHIVER_BROKER_LEASE / 3`` seconds the instance renews its key
  ``lease:<id>`` and its presence set (redis_presence.py) for one lease, and puts itself
  in the registry. A renewal that finds its presence set missing (Redis restarted empty,
  or the instance was taken for dead) writes it again: presence is back within one
  renewal. The same round trip reads which instances are alive (``alive``, a snapshot the
  journal reads in its worker threads) and removes the dead ones from the registry,
  atomically, so exactly one survivor recovers each dead instance's dialogs.
* **Claims.** ``claim:<user>`` holds ``<instance>:reply`` while a reply streams into the
  user's dialog, ``<instance>:archive`` while it is archived, for one lease, renewed with
  the instance's: a chat elsewhere is ``Busy`` meanwhile, an archive elsewhere waits, and
  a dead holder's claim expires by itself.
* **Lost and recovered.** Any failing command marks the broker lost: one ``broker.lost``
  line; local streams go on (delivery is in-process first), cross-instance delivery
  pauses, no disconnect archive fires (presence cannot be checked). The renewal loop
  tries again every half second; when it succeeds, presence is written again, the
  listener has resubscribed, one ``broker.recovered`` line, and this instance's streams
  are ended (``resync``) so each client reconnects and replays what it missed from the
  journal (the truth: nothing is lost, and a replay never sends a message twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from anyio.abc import TaskGroup

from .broker import Broker, BrokerUnavailable, ClaimKind, OnDead, redact_error
from .config import Settings, redacted_url
from .hub import Event, Hub
from .logs import log
from .owners import Instance
from .redis_fanout import RedisFanout
from .redis_presence import LIVENESS_LUA, PRESENT_LUA, Keys, RedisPresence, text

PREFIX = "archiver:"
RETRY = 0.5  # seconds between attempts while the broker is lost
CLAIM_POLL = 0.02  # seconds between attempts at a claim another instance holds
LISTEN_WAIT = 2.0  # at most this long before `ready` waits for the user's channel

# Compare-and-delete: release only a claim this instance still holds.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisBroker(Broker):
    name = "redis"
    shared = True

    def __init__(self, settings: Settings, hub: Hub, instance: Instance | None) -> None:
        super().__init__(hub, instance)
        self.url = settings.broker
        self.lease_ms = int(settings.broker_lease * 1000)
        self.renew_every = settings.broker_lease / 3
        self.keys = Keys(PREFIX, self.id)
        self.presence = RedisPresence(hub, self.keys, self.id, self.lease_ms)
        self.fanout = RedisFanout(hub, self.keys, self.id, self._failed)
        self._live: frozenset[str] = frozenset({self.id})
        self._held: dict[str, str] = {}  # user -> the claim's value, while held
        self._lost_at: float | None = None
        # Until then, after a recovery, presence elsewhere is not known (gone_everywhere).
        self._settled_at = 0.0
        self._changed = asyncio.Event()
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}
        self._on_dead: OnDead | None = None
        self._tg: TaskGroup | None = None

    # -- start and stop -----------------------------------------------------------------

    async def start(self, task_group: TaskGroup, on_dead: OnDead) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One retry, at once: a pooled connection Redis closed (a restart) is replaced,
        # and a Redis that is down still shows at once, as `broker.lost`.
        self._redis = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=3, retry=Retry(NoBackoff(), 1)
        )
        for name, lua in (("present", PRESENT_LUA), ("liveness", LIVENESS_LUA)):
            self._scripts[name] = self._redis.register_script(lua)
        self._scripts["release"] = self._redis.register_script(RELEASE_LUA)
        try:
            await self._renew()
        except Exception as exc:  # any failure: refuse to start
            raise BrokerUnavailable(
                f"ARCHIVER_BROKER {redacted_url(self.url)} is unreachable: "
                f"{type(exc).__name__}: {redact_error(str(exc), self.url)}"
            ) from None
        self._on_dead, self._tg = on_dead, task_group
        task_group.start_soon(self._renewer)
        task_group.start_soon(self._presence_writer)
        task_group.start_soon(self.fanout.sender, self._redis)
        task_group.start_soon(
            self.fanout.listener, self._redis, lambda: set(self.presence.registered), RETRY
        )
        log.info(
            "broker.connected",
            url=redacted_url(self.url),
            instance=self.id,
            lease=self.lease_ms / 1000,
            instances=len(self._live),
        )

    async def close(self) -> None:
        if self._redis is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                pipe = self._redis.pipeline(transaction=False)
                pipe.srem(self.keys.registry, self.id)
                pipe.delete(self.keys.lease, self.keys.users)
                for user, value in self._held.items():
                    await self._scripts["release"](
                        keys=[self.keys.claim(user)], args=[value], client=pipe
                    )
                await pipe.execute()
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    @property
    def lost(self) -> bool:
        return self._lost_at is not None

    # -- the lease ----------------------------------------------------------------------

    async def _renew(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self.keys.lease, "1", px=self.lease_ms)
        pipe.sadd(self.keys.registry, self.id)
        pipe.pexpire(self.keys.users, self.lease_ms)
        for user in self._held:
            pipe.pexpire(self.keys.claim(user), self.lease_ms)
        await self._scripts["liveness"](
            keys=[self.keys.registry], args=[self.keys.prefix], client=pipe
        )
        results = await pipe.execute()
        live, dead = results[-1]
        self._live = frozenset({self.id, *map(text, live)})
        users_kept = results[2]
        if not users_kept and self.presence.registered and not self.lost:
            # Redis lost our set (restarted empty, or took us for dead): write it again.
            count = await self.presence.reregister(self._redis)
            log.warning("broker.registered", instance=self.id, users=count, why="missing")
        for instance in map(text, dead):
            if instance != self.id and self._tg is not None and self._on_dead is not None:
                self._tg.start_soon(self._on_dead, instance)

    async def _renewer(self) -> None:
        while True:
            await asyncio.sleep(RETRY if self.lost else self.renew_every)
            try:
                await self._renew()
                if self.lost:
                    await self._recover()
            except Exception as exc:  # any failure: the broker is lost
                self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.fanout.drop_pending()
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            self.fanout.invalidate()
            log.warning(
                "broker.lost",
                url=redacted_url(self.url),
                error=type(exc).__name__,
                detail=redact_error(str(exc), self.url),
            )

    async def _recover(self) -> None:
        count = await self.presence.reregister(self._redis)
        self.fanout.invalidate()  # subscribe to exactly the users just written
        with contextlib.suppress(TimeoutError):
            # Bounded by a renewal's interval: the lease is renewed by this same task.
            async with asyncio.timeout(min(5.0, self.renew_every)):
                await self.fanout.connected.wait()
        assert self._lost_at is not None
        seconds = round(time.monotonic() - self._lost_at, 1)
        self._lost_at = None
        self._settled_at = time.monotonic() + self.lease_ms / 1000
        # Divergence #13: every stream ends here. Events of other instances published
        # meanwhile never reached them: each client reconnects and replays the journal.
        resynced = sum(self.hub.close_user(user, "resync") for user in self.hub.users())
        log.info(
            "broker.recovered",
            url=redacted_url(self.url),
            seconds=seconds,
            users=count,
            resynced=resynced,
        )
        self._changed.set()

    # -- fan-out ------------------------------------------------------------------------

    def publish(self, user: str, event: Event) -> int:
        delivered = self.hub.publish(user, event)
        if not self.lost:
            self.fanout.send(user, event)
        return delivered

    # -- presence -----------------------------------------------------------------------

    def joined(self, user: str) -> None:
        self.presence.mark(user)
        self._changed.set()

    def left(self, user: str) -> None:
        self.presence.mark(user)
        self._changed.set()

    async def _presence_writer(self) -> None:
        """Make Redis follow the hub: presence sets and channel subscriptions, in order."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self.lost:
                continue  # written whole on recovery
            try:
                while self.presence.dirty:
                    added, removed = await self.presence.sync(self._redis)
                    await self.fanout.subscribe(added)
                    await self.fanout.unsubscribe(removed)
            except Exception as exc:  # any failure: the broker is lost
                self._failed(exc)

    async def listening(self, user: str) -> None:
        if not self.lost:
            await self.fanout.wait_listening(user, LISTEN_WAIT)

    async def gone_everywhere(self, user: str) -> bool | None:
        if self.hub.count(user):
            return False
        # Just after a recovery the others may not have written their presence again yet
        # (Redis restarted empty; each does within a lease, or is dead by then): "nowhere"
        # would archive a dialog whose tab just reconnected to another instance. A grace
        # timer or a recovery can wait that long; then ask.
        unsettled = self._settled_at - time.monotonic()
        if unsettled > 0:
            await asyncio.sleep(unsettled)
            if self.hub.count(user):
                return False
        elsewhere = await self.present_elsewhere([user])
        return None if elsewhere is None else user not in elsewhere

    async def present_elsewhere(self, users: list[str]) -> set[str] | None:
        if self.lost or time.monotonic() < self._settled_at:
            return None  # unknown (see gone_everywhere); a shutdown then leaves them
        try:
            pipe = self._redis.pipeline(transaction=False)
            for user in users:
                args = [user, self.id, self.keys.prefix]
                await self._scripts["present"](keys=[self.keys.registry], args=args, client=pipe)
            found = await pipe.execute()
        except Exception as exc:  # any failure: the broker is lost
            self._failed(exc)
            return None
        return {user for user, where in zip(users, found, strict=True) if where}

    # -- liveness and ownership ---------------------------------------------------------

    def alive(self, owner: str) -> bool:
        return owner in self._live

    def peers(self) -> int:
        return len(self._live) - 1

    async def leaving(self) -> None:
        if self.lost:
            return
        try:  # expires with the lease: a marker left by a crash misleads no one for long
            await self._redis.set(self.keys.leaving_of(self.id), "1", px=self.lease_ms)
        except Exception as exc:  # any failure: the broker is lost
            self._failed(exc)

    async def peers_staying(self) -> int:
        others = sorted(self._live - {self.id})
        if self.lost or not others:
            return 0
        try:
            pipe = self._redis.pipeline(transaction=False)
            for instance in others:
                pipe.exists(self.keys.leaving_of(instance))
            leaving = await pipe.execute()
        except Exception as exc:  # any failure: the broker is lost
            self._failed(exc)
            return 0
        return sum(1 for marked in leaving if not marked)

    async def acquire(self, user: str, kind: ClaimKind) -> bool:
        value = f"{self.id}:{kind}"
        key = self.keys.claim(user)
        while not self.lost:
            try:
                if await self._redis.set(key, value, nx=True, px=self.lease_ms):
                    self._held[user] = value
                    return True
                holder = await self._redis.get(key)
            except Exception as exc:  # any failure: the broker is lost
                self._failed(exc)
                break
            if holder is not None and kind == "reply" and text(holder).endswith(":reply"):
                return False
            await asyncio.sleep(CLAIM_POLL)
        # Lost: nobody can be asked. The flock still orders the bytes of the journal.
        return True

    async def release(self, user: str) -> None:
        value = self._held.pop(user, None)
        if value is None or self.lost:
            return
        try:
            await self._scripts["release"](keys=[self.keys.claim(user)], args=[value])
        except Exception as exc:  # any failure: the broker is lost
            self._failed(exc)

    async def acquire_all(self, users: list[str]) -> list[str]:
        if self.lost or not users:
            return []  # nobody can be asked: the shutdown leaves them (see Sessions.drain)
        value = f"{self.id}:archive"
        try:
            pipe = self._redis.pipeline(transaction=False)
            for user in users:
                pipe.set(self.keys.claim(user), value, nx=True, px=self.lease_ms)
                pipe.get(self.keys.claim(user))
            answers = await pipe.execute()
        except Exception as exc:  # any failure: the broker is lost
            self._failed(exc)
            return []
        claimed, ours = set(), []
        for user, taken, holder in zip(users, answers[::2], answers[1::2], strict=True):
            if taken:
                claimed.add(user)
            elif holder is None or text(holder).startswith(f"{self.id}:"):
                ours.append(user)
        self._held.update(dict.fromkeys(claimed, value))
        # Not taken, but not another instance's either: a reply of this instance's own
        # (which the shutdown has stopped) still held it, or had just let it go. It is
        # released as that reply ends, so wait for it, as archive() does; left out, the
        # dialog stayed in current.yaml after the shutdown (a loaded CI run, --workers 2).
        # At most a lease: a reply that never lets go leaves its dialog, as before.
        waits = [asyncio.ensure_future(self.acquire(user, "archive")) for user in ours]
        if waits:
            await asyncio.wait(waits, timeout=self.lease_ms / 1000)
        for user, wait in zip(ours, waits, strict=True):
            if wait.done() and wait.result():
                claimed.add(user)
            else:
                wait.cancel()
        return [user for user in users if user in claimed]  # in the given (lock) order

    async def release_all(self, users: list[str]) -> None:
        held = [(u, self._held.pop(u)) for u in users if u in self._held]
        if not held or self.lost:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for user, value in held:
                await self._scripts["release"](
                    keys=[self.keys.claim(user)], args=[value], client=pipe
                )
            await pipe.execute()
        except Exception as exc:  # any failure: the broker is lost
            self._failed(exc)

    # -- stream tickets -----------------------------------------------------------------

    async def use_ticket(self, nonce: str, seconds: float) -> bool:
        # SET NX is the atomic first use: of two instances redeeming one ticket at once,
        # exactly one sets the key. It expires with the ticket, so nothing accumulates.
        if self.lost:
            return True  # nobody can be asked: single use per instance (tickets.py)
        try:
            first = await self._redis.set(
                self.keys.ticket(nonce), self.id, nx=True, px=max(1, int(seconds * 1000))
            )
        except Exception as exc:  # any failure: the broker is lost
            self._failed(exc)
            return True
        return bool(first)

    def health(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": "lost" if self.lost else "ok",
            "instances": len(self._live),
            "received": self.fanout.received,
        }
