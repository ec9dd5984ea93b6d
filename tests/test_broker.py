"""The broker seam: the memory backend, and the Redis one against a real redis-server.

Two or three "instances" run in one event loop here: each a :class:`Sessions` with its
own hub, its own :class:`Instance` and its own :class:`RedisBroker`, on one shared data
directory and one real Redis (the ``redis_server`` fixture). The end-to-end versions,
with real processes behind a real nginx, are in tests/test_e2e_redis.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from archiver.broker import Broker, BrokerUnavailable, make_broker, preflight
from archiver.config import Settings
from archiver.hub import Event, Hub, Inbox
from archiver.journal import Journal
from archiver.owners import Instance
from archiver.redis_broker import RedisBroker
from archiver.redis_fanout import decode, encode
from archiver.replies import Echo
from archiver.sessions import Busy, Sessions
from archiver.threads import JournalThreads
from tests.helpers import RedisServer, free_port, until


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def names(inbox: Inbox) -> list[str]:
    return [e.name for e in inbox.pending or ()]


@contextlib.asynccontextmanager
async def node(data: Path, broker: str, **overrides: Any) -> AsyncIterator[Sessions]:
    """One instance of the service, without HTTP: Sessions on a broker, in a task group."""
    values: dict[str, Any] = {
        "data_dir": data,
        "disconnect_grace": 0.3,
        "fsync": "no",
        "jwt_secret": "x" * 32,
        "broker": broker,
        "broker_lease": 1.5,
        "sweep_interval": 3600,
    }
    settings = Settings(**{**values, **overrides})
    instance = Instance(data)
    hub = Hub()
    made = make_broker(settings, hub, instance)
    journal = Journal(data, "no", instance.id, made.alive)
    s = Sessions(
        settings=settings,
        threads=JournalThreads(journal),
        hub=hub,
        responder=Echo(overrides.get("echo_delay", 0.01)),
        instance=instance,
        broker=made,
    )
    try:
        async with anyio.create_task_group() as tg:
            await s.run(tg)
            yield s
            tg.cancel_scope.cancel()
    finally:
        await made.close()
        s.threads.close()
        instance.close()


def archives(s: Sessions, user: str) -> list[str]:
    return s.threads.journal.layout.archive_names(user)


def reasons(s: Sessions, user: str) -> list[str]:
    directory = s.threads.journal.layout.archived_dir(user)
    out = []
    for name in archives(s, user):
        text = (directory / name).read_text()
        out.append(text.split("reason: ", 1)[1].split()[0])
    return out


# -- the memory backend -----------------------------------------------------------------


@pytest.mark.anyio
async def test_memory_broker_is_the_hub_and_the_instance_locks(tmp_path: Path) -> None:
    hub = Hub()
    instance = Instance(tmp_path)
    broker = make_broker(Settings(data_dir=tmp_path, jwt_secret="x" * 32), hub, instance)
    try:
        assert type(broker) is Broker and not broker.shared
        inbox = hub.subscribe("a")
        assert broker.publish("a", Event("message", {"x": 1})) == 1
        assert names(inbox) == ["message"]
        assert await broker.gone_everywhere("a") is False
        hub.unsubscribe(inbox)
        assert await broker.gone_everywhere("a") is True
        assert await broker.acquire("a", "reply") is True
        assert broker.alive(instance.id) and not broker.alive("nobody-1-abc")
        assert await broker.present_elsewhere(["a"]) == set()
        assert await broker.use_ticket("n", 30) and await broker.use_ticket("n", 30)
    finally:
        instance.close()


def test_memory_broker_never_imports_redis() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from archiver.app import create_app; from archiver.config import Settings;"
        "create_app(Settings(jwt_secret='x'*32)); print('redis' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_events_cross_the_wire_unchanged() -> None:
    event = Event("message", {"dialog": "d", "seq": 3, "text": "é\n"}, id="d:3")
    assert decode(encode("me", event)) == ("me", event)


def test_unreachable_broker_refuses_with_the_url_but_not_its_password(tmp_path: Path) -> None:
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(BrokerUnavailable) as caught:
        preflight(Settings(data_dir=tmp_path, jwt_secret="x" * 32, broker=url))
    message = str(caught.value)
    assert "hunter2" not in message and "redis://user:***@127.0.0.1" in message
    assert "\n" not in message and "ConnectionError" in message


# -- Redis: stream tickets --------------------------------------------------------------


@pytest.mark.anyio
async def test_a_ticket_is_used_once_across_instances_and_expires_with_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with node(tmp_path, redis_server.url) as x, node(tmp_path, redis_server.url) as y:
        assert isinstance(x.broker, RedisBroker) and isinstance(y.broker, RedisBroker)
        # Both at once: SET NX lets exactly one through.
        firsts = await asyncio.gather(x.broker.use_ticket("n1", 30), y.broker.use_ticket("n1", 30))
        assert sorted(firsts) == [False, True]
        assert not await x.broker.use_ticket("n1", 30)
        assert 0 < await x.broker._redis.pttl(x.broker.keys.ticket("n1")) <= 30_000
        assert await y.broker.use_ticket("n2", 0.05)
        with anyio.fail_after(5):  # the key expires with its ticket
            while await x.broker._redis.exists(x.broker.keys.ticket("n2")):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert await x.broker.use_ticket("n2", 30)
        # Lost: nobody can be asked; the ticket's own process record is what holds then.
        redis_server.stop()
        assert await x.broker.use_ticket("n1", 30), "while lost, single use per instance only"
        assert x.broker.lost


# -- Redis: fan-out ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_chat_on_one_instance_streams_to_the_other_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with node(tmp_path, redis_server.url) as x, node(tmp_path, redis_server.url) as y:
        assert isinstance(x.broker, RedisBroker)
        on_x = x.connect("u")
        on_y = y.connect("u")
        await x.broker.listening("u")
        result = await y.chat("u", "hello there")
        expected = names(on_y)  # local: in-process
        assert expected[:2] == ["message", "reply"] and expected[-2:] == ["reply", "message"]
        await until(
            lambda: len(names(on_x)) >= len(expected), what="events on x", show=lambda: names(on_x)
        )
        await anyio.sleep(0.2)  # the only wait: that nothing comes twice
        assert names(on_x) == expected  # remote: through Redis, each once, in order
        ids = [e.id for e in on_x.pending or () if e.name == "message"]
        assert ids == [f"{result.user_message.dialog}:1", f"{result.user_message.dialog}:2"]
        # An archive on x reaches y's stream too.
        await x.archive("u", "user")
        await until(lambda: "archived" in names(on_y), what="archived on y")
        assert names(on_y).count("archived") == 1 and names(on_x).count("archived") == 1


@pytest.mark.anyio
async def test_ready_waits_until_the_users_channel_listens(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with node(tmp_path, redis_server.url) as x:
        assert isinstance(x.broker, RedisBroker)
        inbox = x.connect("v")
        stream = x.stream(inbox, None)
        first = await stream.__anext__()
        assert first[0].name == "ready"
        assert "v" in x.broker.fanout.listening
        await stream.aclose()


# -- Redis: presence --------------------------------------------------------------------


@pytest.mark.anyio
async def test_closing_one_of_two_tabs_archives_nothing_closing_both_archives_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with node(tmp_path, redis_server.url) as x, node(tmp_path, redis_server.url) as y:
        tab_a, tab_b = x.connect("w"), y.connect("w")
        await x.broker.listening("w")
        await y.broker.listening("w")
        await x.chat("w", "one")
        await y.chat("w", "two")
        await until(lambda: "w" in y.broker.presence.registered, what="w registered on y")  # type: ignore[union-attr]
        y.disconnect(tab_b)
        await until(lambda: "w" not in y.presence.timers, what="y's grace timer to run out")
        assert archives(x, "w") == [] and "w" not in y.presence.timers
        x.disconnect(tab_a)
        await until(lambda: archives(x, "w"), what="the archive once both tabs closed")
        await anyio.sleep(0.6)  # the only wait: that nothing more happens
        assert reasons(x, "w") == ["disconnect"]


@pytest.mark.anyio
async def test_an_archive_waits_for_a_reply_streaming_on_another_instance(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        node(tmp_path, redis_server.url, echo_delay=0.05) as x,
        node(tmp_path, redis_server.url) as y,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(x.chat, "c", "a long question with many words to echo back slowly")
            await until(lambda: "c" in x.chats, what="x's reply under way")
            await until(lambda: x.broker._held, what="x's claim")  # type: ignore[union-attr]
            with pytest.raises(Busy):
                await y.chat("c", "a second question")
            archived = await y.archive("c", "user")
        assert archived is not None and archived.messages == 2  # the reply went in first


# -- Redis: faults ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_lost_and_recovered_once_each_local_streams_go_on(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="archiver")
    async with node(tmp_path, redis_server.url) as x:
        broker = x.broker
        assert isinstance(broker, RedisBroker)
        inbox = x.connect("l")
        await broker.listening("l")
        redis_server.stop()
        await until(lambda: broker.lost, within=10, what="broker.lost")
        await x.chat("l", "still here")  # the local stream goes on
        assert names(inbox).count("message") == 2
        assert await broker.gone_everywhere("nobody") is None
        x.disconnect(inbox)
        await until(lambda: "l" not in x.presence.timers, what="the grace to run out")
        assert archives(x, "l") == []  # presence unknown: no disconnect archive
        redis_server.start()
        await until(lambda: not broker.lost, within=10, what="broker.recovered")
        await anyio.sleep(0.6)
    events = [r.getMessage() for r in caplog.records]
    text = "\n".join(events)
    assert text.count("broker.lost") == 1 and text.count("broker.recovered") == 1, text


@pytest.mark.anyio
async def test_redis_restarted_empty_gets_presence_back_within_a_renewal(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with node(tmp_path, redis_server.url) as x, node(tmp_path, redis_server.url) as y:
        x.connect("r")
        await x.broker.listening("r")
        assert await y.broker.present_elsewhere(["r"]) == {"r"}
        redis_server.restart()
        # One renewal is a third of the lease (0.5 s); recovery may take a retry more.
        await until(
            lambda: not x.broker.lost and not y.broker.lost, within=10, what="both recovered"
        )

        async def present() -> bool:
            return await y.broker.present_elsewhere(["r"]) == {"r"}  # type: ignore[union-attr]

        with anyio.fail_after(5):
            while not await present():  # noqa: ASYNC110 (polling Redis: no event to wait on)
                await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_a_dead_instance_is_recovered_by_one_survivor_and_its_users_go_on(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with node(tmp_path, redis_server.url) as y, node(tmp_path, redis_server.url) as z:
        stack = contextlib.AsyncExitStack()
        x = await stack.enter_async_context(node(tmp_path, redis_server.url))
        x.connect("gone")
        x.connect("moved")
        await x.chat("gone", "hello")
        await x.chat("moved", "hello")
        dead = x.instance.id  # type: ignore[union-attr]
        # A death: its task group stops (no renewals) and nothing is cleaned up.
        assert isinstance(x.broker, RedisBroker)
        x.broker.close = _nothing  # type: ignore[method-assign]
        x.archiver.served.clear()  # a SIGKILL archives nothing at "shutdown"
        await stack.aclose()
        y.connect("moved")  # the user reconnected to y before the lease ran out
        await y.broker.listening("moved")
        await until(
            lambda: archives(y, "gone"), within=15, what="the dead instance's dialog archived"
        )
        assert reasons(y, "gone") == ["recovery"]
        assert archives(y, "moved") == []  # goes on in the same dialog
        result = await y.chat("moved", "still the same dialog?")
        assert result.user_message.message.seq == 3
        await until(
            lambda: not y.broker.alive(dead) and not z.broker.alive(dead),  # type: ignore[union-attr]
            what="both survivors to see the instance dead",
        )


async def _nothing() -> None:
    return None


@pytest.mark.anyio
async def test_a_redis_that_stops_answering_without_closing_is_lost_and_recovered(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGSTOP: no RST, no error, only silence (a partition). The commands time out, the
    listener starts over, and delivery between instances works again afterwards."""
    import os
    import signal

    async with node(tmp_path, redis_server.url) as x, node(tmp_path, redis_server.url) as y:
        on_x = x.connect("p")
        y.connect("p")
        await x.broker.listening("p")
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            await until(lambda: x.broker.lost and y.broker.lost, within=20, what="both lost")
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        await until(
            lambda: not x.broker.lost and not y.broker.lost, within=20, what="both recovered"
        )
        await until(lambda: on_x.closed == "resync", what="x's stream resynced")
        on_x = x.connect("p")  # the client reconnects
        await x.broker.listening("p")
        await y.chat("p", "after the silence")
        await until(lambda: "message" in names(on_x), what="y's message on x again")


@pytest.mark.anyio
async def test_a_shutdown_archives_only_users_connected_nowhere_else(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with node(tmp_path, redis_server.url) as x, node(tmp_path, redis_server.url) as y:
        for user in ("here", "both", "busy"):
            x.connect(user)
            await x.chat(user, "hello")
        y.connect("both")
        await until(lambda: "both" in y.broker.presence.registered, what="both on y")  # type: ignore[union-attr]
        assert await y.broker.acquire("busy", "reply")  # y streams a reply into it
        await x.drain()
        await y.broker.release("busy")
        assert reasons(x, "here") == ["shutdown"]
        assert archives(x, "both") == [] and archives(x, "busy") == []


@pytest.mark.anyio
async def test_claiming_all_waits_for_a_claim_this_instance_holds_not_for_another_s(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with node(tmp_path, redis_server.url) as x, node(tmp_path, redis_server.url) as y:
        assert await x.broker.acquire("mine", "reply")
        assert await y.broker.acquire("theirs", "reply")
        claiming = asyncio.ensure_future(x.broker.acquire_all(["mine", "theirs", "free"]))
        done, _ = await asyncio.wait({claiming}, timeout=0.3)  # nothing may end meanwhile
        assert not done, "claimed while its own reply still held a claim"
        await x.broker.release("mine")
        assert await claiming == ["mine", "free"]
        assert x.broker._held == {  # type: ignore[union-attr]
            "mine": f"{x.broker.id}:archive",
            "free": f"{x.broker.id}:archive",
        }
        await x.broker.release_all(["mine", "free"])
        await y.broker.release("theirs")


@pytest.mark.anyio
async def test_a_password_and_a_unix_socket_and_no_password_in_any_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="archiver")
    server = RedisServer(tmp_path / "redis", password="s3cret-pw").start()
    try:
        wrong = server.url.replace("s3cret-pw", "nope")
        with pytest.raises(BrokerUnavailable) as caught:
            preflight(Settings(data_dir=tmp_path, jwt_secret="x" * 32, broker=wrong))
        assert "nope" not in str(caught.value) and ":***@" in str(caught.value)
        async with (
            node(tmp_path, server.url) as x,
            node(tmp_path, server.unix_url) as y,
        ):
            on_x = x.connect("s")
            await x.broker.listening("s")
            await y.chat("s", "over a unix socket")
            await until(lambda: "message" in names(on_x), what="y's message on x")
    finally:
        server.stop()
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "broker.connected" in text and "s3cret-pw" not in text


@pytest.mark.anyio
async def test_presence_flushed_away_without_an_error_is_written_again(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """FLUSHALL: no connection breaks, so nothing is lost; the next renewal finds the
    instance's presence gone and writes it again (`broker.registered`)."""
    import redis as redis_py

    caplog.set_level(logging.INFO, logger="archiver")
    async with node(tmp_path, redis_server.url) as x, node(tmp_path, redis_server.url) as y:
        x.connect("f")
        await until(lambda: "f" in x.broker.presence.registered, what="f registered")  # type: ignore[union-attr]
        redis_py.Redis.from_url(redis_server.url).flushall()
        assert await y.broker.present_elsewhere(["f"]) == set()

        async def present() -> bool:
            return await y.broker.present_elsewhere(["f"]) == {"f"}  # type: ignore[union-attr]

        with anyio.fail_after(10):
            while not await present():  # noqa: ASYNC110 (polling Redis: no event to wait on)
                await anyio.sleep(0.05)
        assert not x.broker.lost
    assert "broker.registered" in [r.getMessage() for r in caplog.records]


@pytest.mark.anyio
async def test_peers_shutting_down_too_are_not_waited_for(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    slow = {"disconnect_grace": 30.0, "shutdown_timeout": 60.0}
    async with node(tmp_path, redis_server.url, **slow) as x, node(tmp_path, redis_server.url) as y:
        await until(lambda: x.broker.peers() == 1 and y.broker.peers() == 1, what="both live")  # type: ignore[union-attr]
        assert await x.broker.peers_staying() == 1  # type: ignore[union-attr]
        await y.broker.leaving()  # type: ignore[union-attr]
        assert await x.broker.peers_staying() == 0  # type: ignore[union-attr]
        x.connect("u")
        await x.chat("u", "hello")
        # A shutdown beside a peer that is leaving too archives without the grace (with a
        # staying peer it would wait ARCHIVER_DISCONNECT_GRACE, 30 s here).
        with anyio.fail_after(20):
            await x.drain()
        assert reasons(x, "u") == ["shutdown"]


@pytest.mark.anyio
async def test_after_a_recovery_nowhere_is_not_believed_before_the_others_wrote_again(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Redis restarted empty; y recovers first, x is slow to write its presence again: the
    user's tab on x must not look connected nowhere to y's grace timer (a loaded CI run
    once archived such a dialog while its tab had just reconnected to x)."""
    # Long enough that x, held at the gate, still holds its lease when y asks.
    lease = {"broker_lease": 9.0}
    async with (
        node(tmp_path, redis_server.url, **lease) as x,
        node(tmp_path, redis_server.url, **lease) as y,
    ):
        x.connect("u")
        await x.broker.listening("u")  # type: ignore[union-attr]
        gate = anyio.Event()
        presence = x.broker.presence  # type: ignore[union-attr]
        rewrite = presence.reregister

        async def slow_reregister(redis: Any) -> int:
            await gate.wait()
            return await rewrite(redis)

        presence.reregister = slow_reregister
        redis_server.stop()
        await until(lambda: x.broker.lost and y.broker.lost, within=10, what="both lost")  # type: ignore[union-attr]
        redis_server.start()  # empty; x cannot write its presence again until the gate opens
        await until(lambda: not y.broker.lost, within=10, what="y recovered")  # type: ignore[union-attr]
        assert not await redis_server_has(redis_server, "archiver:users:" + x.broker.id)  # type: ignore[union-attr]
        async with anyio.create_task_group() as tg:
            answer: list[bool | None] = []

            async def ask() -> None:
                answer.append(await y.broker.gone_everywhere("u"))  # type: ignore[union-attr]

            tg.start_soon(ask)
            # Without the wait after a recovery, y answers "nowhere" within this window.
            with anyio.move_on_after(0.3):
                while not answer:  # noqa: ASYNC110 (a window in which nothing may happen)
                    await anyio.sleep(0.01)
            gate.set()  # x writes its presence again, well within the lease
        assert answer == [False]


async def redis_server_has(server: RedisServer, key: str) -> bool:
    import redis.asyncio as aioredis

    client = aioredis.from_url(server.url)
    try:
        return bool(await client.exists(key))
    finally:
        await client.aclose()
