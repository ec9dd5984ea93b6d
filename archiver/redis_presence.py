"""Presence across the cluster, in Redis: which instances hold a connection of a user.

Each instance keeps one Redis set, ``<prefix>users:<instance>``, of the users it has a
connection of, under the same lease as the instance's own key (``<prefix>lease:<id>``,
renewed by redis_broker.py): when an instance dies, both expire within the lease and its
connections leave presence by themselves. Renewing costs one ``PEXPIRE`` per instance,
whatever the number of users. A user is present on instance *i* while *i* is in the
registry (``<prefix>instances``), its lease exists and the user is in its set; one Lua
script answers that for all instances in one round trip (a single Redis, not a Redis
Cluster: the script names keys it computes).

The hub is the truth of this instance's connections; this class makes Redis follow it:
``mark(user)`` notes a user whose first connection opened or last closed, and ``sync``
writes the difference (so a connect and a disconnect in one loop turn cost nothing).
"""

from __future__ import annotations

from typing import Any

from .hub import Hub

# Which instances other than ARGV[2] hold user ARGV[1] (ARGV[3]: the key prefix).
PRESENT_LUA = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if id ~= ARGV[2] and redis.call('EXISTS', ARGV[3] .. 'lease:' .. id) == 1
     and redis.call('SISMEMBER', ARGV[3] .. 'users:' .. id, ARGV[1]) == 1 then
    out[#out + 1] = id
  end
end
return out
"""

# The registry's live instances, and its dead ones removed: atomically, so each dead
# instance is reported to exactly one caller (the survivor that recovers its dialogs).
LIVENESS_LUA = """
local live, dead = {}, {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'lease:' .. id) == 1 then
    live[#live + 1] = id
  else
    redis.call('SREM', KEYS[1], id)
    dead[#dead + 1] = id
  end
end
return {live, dead}
"""


class Keys:
    """Every Redis key and channel name the broker uses (one place spells them)."""

    def __init__(self, prefix: str, instance: str) -> None:
        self.prefix = prefix
        self.registry = prefix + "instances"
        self.lease = self.lease_of(instance)
        self.users = prefix + "users:" + instance
        self.control = prefix + "instance:" + instance  # this instance's own channel

    def lease_of(self, instance: str) -> str:
        return self.prefix + "lease:" + instance

    def leaving_of(self, instance: str) -> str:
        return self.prefix + "leaving:" + instance

    def claim(self, user: str) -> str:
        return self.prefix + "claim:" + user

    def ticket(self, nonce: str) -> str:
        return self.prefix + "ticket:" + nonce

    def channel(self, user: str) -> str:
        return self.prefix + "user:" + user

    def user_of(self, channel: str) -> str | None:
        head = self.prefix + "user:"
        return channel[len(head) :] if channel.startswith(head) else None


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisPresence:
    def __init__(self, hub: Hub, keys: Keys, me: str, lease_ms: int) -> None:
        self.hub = hub
        self.keys = keys
        self.me = me
        self.lease_ms = lease_ms
        self.registered: set[str] = set()  # the users this instance's set holds in Redis
        self._dirty: set[str] = set()

    def mark(self, user: str) -> None:
        self._dirty.add(user)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    async def sync(self, redis: Any) -> tuple[list[str], list[str]]:
        """Write the marked users' changes; return (users added, users removed)."""
        users, self._dirty = self._dirty, set()
        added = [u for u in users if self.hub.count(u) and u not in self.registered]
        removed = [u for u in users if not self.hub.count(u) and u in self.registered]
        if not added and not removed:
            return [], []
        try:
            pipe = redis.pipeline(transaction=True)
            if added:
                pipe.sadd(self.keys.users, *added)
            if removed:
                pipe.srem(self.keys.users, *removed)
            pipe.pexpire(self.keys.users, self.lease_ms)
            await pipe.execute()
        except BaseException:
            self._dirty |= users  # written again once the broker is back
            raise
        self.registered |= set(added)
        self.registered -= set(removed)
        return added, removed

    async def reregister(self, redis: Any) -> int:
        """Write this instance's whole set again (Redis came back, maybe empty)."""
        users = self.hub.users()
        pipe = redis.pipeline(transaction=True)
        pipe.delete(self.keys.users)
        if users:
            pipe.sadd(self.keys.users, *users)
            pipe.pexpire(self.keys.users, self.lease_ms)
        await pipe.execute()
        self.registered = set(users)
        self._dirty.clear()
        return len(users)
