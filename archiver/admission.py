"""Who may open a stream or send a chat: caps per address and per process, a rate per address.

One visitor of a public widget must not be able to take the service from everyone else.
Each request is judged before it costs anything (no journal write, no task):

* **per process**: past ``max_connections`` open streams a new one gets 503 with
  ``Retry-After``: the descriptors that are left keep ``/health``, ``/metrics`` and chats
  working;
* **per client address** (the forwarded one behind a trusted proxy): at most
  ``max_streams_per_ip`` open streams (429), and ``rate_per_ip`` chats and new streams a
  minute (429), a token bucket holding one minute's worth, so a busy office or school
  behind one NAT address works;
* **per user** (``max_streams_per_user``) is not refused here: the presence layer ends the
  user's oldest stream with ``event: replaced`` instead (see ARCHITECTURE.md).

The front door (frontdoor.py) asks :meth:`Admission.refuse_early` first, before the
token is verified, so a flood over its limits costs next to nothing; the route then judges
what got through (``admit_stream``, ``admit_chat``), which alone takes from the rate.

``0`` turns each limit off. Every refusal is one ``request.rejected`` line as usual; a run
of refusals of one kind for one address is one *episode*, logged once when it starts
(``limit.exceeded``) and once when a request of that address is admitted again
(``limit.recovered``, with how many were refused), not once per request.

All state is in-process and driven by a monotonic clock passed in, so it is tested without
sleeping. With several instances each counts its own streams.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .limits import RateLimit, ceil_seconds
from .logs import log

# How long a refused stream should wait before it tries again: streams end when their
# visitors leave, so a few seconds is enough to be worth a retry.
STREAM_RETRY_AFTER = 5.0
# Episodes remembered at once; an address that is refused and never comes back would
# otherwise stay in the table for ever.
MAX_EPISODES = 10_000
_FULL = "*"  # the owner of the process-wide episode: every client at once


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused, in the words the HTTP error carries."""

    status: int
    code: str
    detail: str
    retry_after: float

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(ceil_seconds(self.retry_after))}


@dataclass
class _Episode:
    started: float
    refused: int = 1


@dataclass
class Admission:
    max_connections: int = 0
    max_streams_per_ip: int = 0
    rate_per_ip: float = 0.0
    streams: int = 0  # open streams of this process
    _per_ip: Counter[str] = field(default_factory=Counter)
    _rate: RateLimit = field(init=False)
    # owner (an address, or _FULL for the whole process) -> refusal code -> its episode
    _episodes: dict[str, dict[str, _Episode]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rate = RateLimit(self.rate_per_ip)

    # -- streams ------------------------------------------------------------------------

    def admit_stream(self, client: str | None, now: float) -> Refusal | None:
        """None if a new stream from ``client`` may open now; count it with :meth:`opened`."""
        refusal = self._stream_refusal(client, now)
        return self._judged(refusal, client, now)

    def refuse_early(self, client: str | None, now: float, stream: bool) -> Refusal | None:
        """The refusal :meth:`admit_stream` (or :meth:`admit_chat`) would give now, taking
        nothing from the rate; counted in its episode. None does not admit: the route's
        own judgement follows, as another request may take the last place meanwhile."""
        refusal = self._cap_refusal(client) if stream else None
        if refusal is None and client is not None and self._rate.wait(client, now):
            refusal = self._rate_refusal(client, now)  # refused: take() takes nothing
        return None if refusal is None else self._judged(refusal, client, now)

    def _stream_refusal(self, client: str | None, now: float) -> Refusal | None:
        refusal = self._cap_refusal(client)
        if refusal is not None or client is None:
            return refusal
        return self._rate_refusal(client, now)

    def _cap_refusal(self, client: str | None) -> Refusal | None:
        if self.max_connections and self.streams >= self.max_connections:
            return Refusal(
                503,
                "too_many_connections",
                "The server holds as many streams as it can; try again in a few seconds.",
                STREAM_RETRY_AFTER,
            )
        if client is None:
            return None
        if self.max_streams_per_ip and self._per_ip[client] >= self.max_streams_per_ip:
            return Refusal(
                429,
                "too_many_streams",
                f"This address has {self.max_streams_per_ip} streams open, the most it may; "
                "close one (another tab?) and try again.",
                STREAM_RETRY_AFTER,
            )
        return None

    def opened(self, client: str | None) -> None:
        self.streams += 1
        if client is not None:
            self._per_ip[client] += 1

    def closed(self, client: str | None) -> None:
        self.streams -= 1
        if client is not None:
            self._per_ip[client] -= 1
            if self._per_ip[client] <= 0:
                del self._per_ip[client]  # no table of every address ever seen

    def streams_of(self, client: str) -> int:
        return self._per_ip.get(client, 0)

    # -- chats --------------------------------------------------------------------------

    def admit_chat(self, client: str | None, now: float) -> Refusal | None:
        refusal = None if client is None else self._rate_refusal(client, now)
        return self._judged(refusal, client, now)

    def _rate_refusal(self, client: str, now: float) -> Refusal | None:
        wait = self._rate.take(client, now)
        if not wait:
            return None
        return Refusal(
            429,
            "rate_limited_address",
            "Too many requests from this address; slow down, please.",
            wait,
        )

    # -- episodes -----------------------------------------------------------------------

    def _judged(self, refusal: Refusal | None, client: str | None, now: float) -> Refusal | None:
        # The process-wide cap is one episode for everyone; the others, one per address.
        address = client or "-"
        if refusal is None:
            self._end(address, now)
            if self._episodes.get(_FULL) and self.streams < self.max_connections:
                self._end(_FULL, now)
            return None
        owner = _FULL if refusal.code == "too_many_connections" else address
        episodes = self._episodes.setdefault(owner, {})
        episode = episodes.get(refusal.code)
        if episode is not None:
            episode.refused += 1
            return refusal
        if len(self._episodes) > MAX_EPISODES:
            del self._episodes[next(iter(self._episodes))]  # the oldest: dicts keep order
        episodes[refusal.code] = _Episode(now)
        log.warning("limit.exceeded", kind=refusal.code, client=owner, status=refusal.status)
        return refusal

    def _end(self, owner: str, now: float) -> None:
        for code, episode in self._episodes.pop(owner, {}).items():
            log.info(
                "limit.recovered",
                kind=code,
                client=owner,
                refused=episode.refused,
                seconds=round(now - episode.started, 1),
            )
