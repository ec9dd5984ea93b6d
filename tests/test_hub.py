from __future__ import annotations

import pytest

from archiver.hub import MAX_PENDING, Event, Hub


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_publish_reaches_every_connection_of_the_user_only() -> None:
    hub = Hub()
    a1, a2, b = hub.subscribe("a"), hub.subscribe("a"), hub.subscribe("b")
    assert hub.publish("a", Event("message", {"n": 1})) == 2
    assert (await a1.get()) == (await a2.get()) == Event("message", {"n": 1})
    assert not b.pending
    assert hub.unsubscribe(a1) == 1 and hub.unsubscribe(a2) == 0
    assert hub.count("a") == 0 and hub.users() == ["b"]


@pytest.mark.anyio
async def test_a_reader_that_falls_behind_is_closed_not_waited_for() -> None:
    hub = Hub()
    slow = hub.subscribe("a")
    for i in range(MAX_PENDING + 5):
        hub.publish("a", Event("message", {"n": i}))
    assert slow.closed == "overflow"
    drained = 0
    while await slow.get() is not None:
        drained += 1
    assert drained == MAX_PENDING


@pytest.mark.anyio
async def test_close_all_delivers_a_final_event_then_ends() -> None:
    hub = Hub()
    inbox = hub.subscribe("a")
    hub.publish("a", Event("message", {}))
    assert hub.close_all("shutdown", Event("shutdown", {})) == 1
    assert (await inbox.get()).name == "message"  # type: ignore[union-attr]
    assert (await inbox.get()).name == "shutdown"  # type: ignore[union-attr]
    assert await inbox.get() is None
    assert hub.publish("a", Event("message", {})) == 0
