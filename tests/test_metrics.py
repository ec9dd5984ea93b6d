"""Metrics in a registry of the app's own, and the archived counter read back."""

from __future__ import annotations

from archiver import collector
from archiver.metrics import Metrics


def test_two_registries_do_not_collide_and_counts_read_back() -> None:
    a, b = Metrics(lambda: 3, lambda: 2), Metrics(lambda: 0, lambda: 0)
    a.archived.labels("disconnect").inc()
    a.archived.labels("disconnect").inc()
    a.archived.labels("timeout").inc()
    assert a.archived_by_reason() == {"disconnect": 2, "timeout": 1}
    assert b.archived_by_reason() == {}
    text = a.render()
    assert b"archiver_connections 3.0" in text and b"archiver_active_users 2.0" in text


def test_collector_freezes_survivors_and_hands_them_back() -> None:
    try:
        collector.start()
        assert collector.frozen() > 0
        collector.freeze()
        assert collector.frozen() > 0
    finally:
        collector.stop()
    assert collector.frozen() == 0
