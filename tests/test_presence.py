"""Presence and its grace timers, driven by a fake clock (no test waits for a grace)."""

from __future__ import annotations

import logging

import anyio
import pytest

from archiver.hub import Hub
from archiver.presence import Presence
from tests.helpers import FakeClock, until


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Gone:
    """An ``on_gone`` that records each call; ``gate`` holds the calls until it is set."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.gate: anyio.Event | None = None

    async def __call__(self, user: str) -> None:
        self.users.append(user)
        try:
            if self.gate is not None:
                await self.gate.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(user)
            raise
        self.finished.append(user)


def presence(grace: float = 5.0) -> tuple[Presence, FakeClock, Gone]:
    clock, gone = FakeClock(), Gone()
    return Presence(Hub(), grace, gone, call_later=clock.call_later), clock, gone


@pytest.mark.anyio
async def test_the_last_connection_gone_calls_on_gone_once_after_the_grace() -> None:
    p, clock, gone = presence()
    async with anyio.create_task_group() as tg:
        p.start(tg)
        one, two = p.connect("a"), p.connect("a")
        assert p.disconnect(one) == 1 and clock.timers == []  # a tab is still open
        assert p.disconnect(two) == 0
        [timer] = clock.timers
        assert timer.due == 5.0 and set(p.timers) == {"a"}
        clock.advance(4.9)
        await anyio.wait_all_tasks_blocked()
        assert gone.users == []
        clock.advance(0.1)
        assert p.timers == {}
        timer.callback()  # a timer that fires twice still calls on_gone once
        await until(lambda: gone.finished, what="on_gone")
        assert gone.users == ["a"]
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_reconnect_within_the_grace_cancels_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="archiver")
    p, clock, gone = presence()
    async with anyio.create_task_group() as tg:
        p.start(tg)
        p.disconnect(p.connect("a"))
        [first] = clock.timers
        again = p.connect("a")
        assert clock.timers == [] and p.timers == {}
        assert "session.resumed" in caplog.text
        first.callback()  # a cancelled timer's callback, were a clock to run it: nothing
        p.disconnect(again)
        [second] = clock.timers
        first.callback()  # nor while the next timer is pending: that one stays
        assert p.timers == {"a": second}
        clock.advance(10)
        await until(lambda: gone.finished, what="on_gone after the second disconnect")
        assert gone.users == ["a"]
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_user_back_when_the_timer_fires_is_not_gone() -> None:
    p, clock, gone = presence()
    async with anyio.create_task_group() as tg:
        p.start(tg)
        p.disconnect(p.connect("a"))
        p.hub.subscribe("a")  # back, without connect() (a stream the hub holds)
        clock.advance(10)
        await anyio.wait_all_tasks_blocked()
        assert gone.users == []
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_shutdown_stops_the_timers_and_starts_none() -> None:
    p, clock, gone = presence()
    async with anyio.create_task_group() as tg:
        p.start(tg)
        p.disconnect(p.connect("a"))
        b = p.connect("b")
        p.begin_shutdown()
        assert p.timers == {} and clock.timers == []
        p.disconnect(b)  # a shutdown's end is not a disconnect
        assert p.timers == {} and clock.timers == []
        clock.advance(10)
        await anyio.wait_all_tasks_blocked()
        assert gone.users == []
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_no_timer_before_start() -> None:
    p, clock, _ = presence()
    p.disconnect(p.connect("a"))
    assert p.timers == {} and clock.timers == []


@pytest.mark.anyio
async def test_the_lifespan_ending_cancels_timers_and_waits_for_on_gone() -> None:
    p, clock, gone = presence()
    gone.gate = anyio.Event()  # never set: on_gone waits until it is cancelled
    async with anyio.create_task_group() as tg:
        p.start(tg)
        p.disconnect(p.connect("a"))
        clock.advance(10)
        await until(lambda: gone.users, what="on_gone under way")
        p.disconnect(p.connect("b"))
        tg.cancel_scope.cancel()
    # The group waited for the on_gone it cancelled, as for a task of its own.
    assert gone.cancelled == ["a"] and gone.finished == []
    assert p.timers == {} and clock.timers == []
    clock.advance(10)  # b's timer was cancelled: nothing starts after the lifespan
    assert gone.users == ["a"]


@pytest.mark.anyio
async def test_what_on_gone_raises_reaches_the_task_group() -> None:
    async def broken(user: str) -> None:
        raise RuntimeError(f"bug for {user}")

    clock = FakeClock()
    p = Presence(Hub(), 5.0, broken, call_later=clock.call_later)
    with pytest.raises(BaseExceptionGroup) as caught:
        async with anyio.create_task_group() as tg:
            p.start(tg)
            p.disconnect(p.connect("a"))
            clock.advance(10)
            await anyio.sleep_forever()
    assert caught.group_contains(RuntimeError, match="bug for a")


@pytest.mark.anyio
async def test_the_loops_own_timer_by_default() -> None:
    gone = Gone()
    p = Presence(Hub(), 0.0, gone)  # grace 0: on the loop's next turn
    async with anyio.create_task_group() as tg:
        p.start(tg)
        p.disconnect(p.connect("a"))
        assert set(p.timers) == {"a"}
        await until(lambda: gone.finished, what="on_gone from the loop's timer")
        assert p.timers == {}
        tg.cancel_scope.cancel()
