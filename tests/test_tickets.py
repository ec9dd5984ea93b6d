"""Stream tickets: one user, a few seconds, one stream."""

from __future__ import annotations

import pytest

from archiver.tickets import BadTicket, Tickets


def test_a_ticket_names_its_user_once() -> None:
    tickets = Tickets(b"k" * 32)
    ticket = tickets.issue("auth0|42", now=100.0)
    assert tickets.redeem(ticket, now=100.5) == "auth0|42"
    with pytest.raises(BadTicket, match="used already"):
        tickets.redeem(ticket, now=101.0)


def test_another_instance_with_the_same_key_redeems_it() -> None:
    ticket = Tickets(b"k" * 32).issue("a", now=0.0)
    assert Tickets(b"k" * 32).redeem(ticket, now=1.0) == "a"
    with pytest.raises(BadTicket, match="not one of ours"):
        Tickets(b"other" * 8).redeem(ticket, now=1.0)


def test_a_ticket_expires() -> None:
    tickets = Tickets(b"k" * 32, seconds=30)
    ticket = tickets.issue("a", now=0.0)
    with pytest.raises(BadTicket, match="expired"):
        tickets.redeem(ticket, now=30.0)


@pytest.mark.parametrize("bad", ["", "x", "a.b", "!!.??", "e30." + "A" * 43, "x" * 5000 + ".y"])
def test_garbage_is_refused_with_a_sentence(bad: str) -> None:
    with pytest.raises(BadTicket) as refused:
        Tickets(b"k" * 32).redeem(bad, now=0.0)
    assert refused.value.detail.endswith(".")


def test_a_forged_user_breaks_the_signature() -> None:
    tickets = Tickets(b"k" * 32)
    _body, mac = tickets.issue("alice", now=0.0).split(".")
    forged = tickets.issue("mallory", now=0.0).split(".")[0] + "." + mac
    with pytest.raises(BadTicket, match="not one of ours"):
        tickets.redeem(forged, now=1.0)


def test_used_tickets_are_forgotten_once_expired() -> None:
    tickets = Tickets(b"k" * 32, seconds=10)
    for i in range(100):
        tickets.redeem(tickets.issue("a", now=float(i)), now=float(i))
    assert len(tickets._used) <= 11


async def _redeem(tickets: Tickets, ticket: str, now: float) -> str:
    return await tickets.redeem_everywhere(ticket, now)


def test_with_a_shared_record_a_ticket_used_elsewhere_is_refused_with_the_same_sentence() -> None:
    import asyncio

    record: dict[str, float] = {}  # what a shared broker remembers: nonce -> seconds left

    async def shared(nonce: str, seconds: float) -> bool:
        first = nonce not in record
        record.setdefault(nonce, seconds)
        return first

    x = Tickets(b"k" * 32, shared=shared)
    y = Tickets(b"k" * 32, shared=shared)
    ticket = x.issue("alice", now=0.0)
    assert asyncio.run(_redeem(x, ticket, 10.0)) == "alice"
    assert list(record.values()) == [20.0], "kept for what is left of the ticket's life"
    with pytest.raises(BadTicket) as elsewhere:
        asyncio.run(_redeem(y, ticket, 11.0))
    with pytest.raises(BadTicket) as here:
        asyncio.run(_redeem(x, ticket, 11.0))
    assert (
        elsewhere.value.detail
        == here.value.detail
        == "The stream ticket was used already; ask for a new one."
    )
    # Without a shared record (the memory broker), only this process's own counts.
    assert asyncio.run(_redeem(Tickets(b"k" * 32), ticket, 11.0)) == "alice"
