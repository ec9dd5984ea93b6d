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
