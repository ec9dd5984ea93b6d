"""Prometheus metrics, in a registry of the app's own (not the process-global one), so
several apps in one process (tests) do not collide."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(
        self,
        connections: Callable[[], int],
        users: Callable[[], int],
        frozen: Callable[[], int] = lambda: 0,
    ) -> None:
        r = self.registry = CollectorRegistry()
        Gauge("archiver_connections", "Open SSE subscriptions.", registry=r).set_function(
            connections
        )
        Gauge("archiver_active_users", "Users with an open subscription.", registry=r).set_function(
            users
        )
        Gauge(
            "archiver_gc_frozen_objects",
            "Objects the garbage collector no longer walks (see collector.py); should follow "
            "archiver_connections, not grow without it.",
            registry=r,
        ).set_function(frozen)
        self.archived = Counter(
            "archiver_dialogs_archived", "Dialogs archived, by reason.", ["reason"], registry=r
        )
        self.appended = Counter(
            "archiver_messages_appended", "Messages journaled, by role.", ["role"], registry=r
        )
        self.archive_seconds = Histogram(
            "archiver_archive_seconds",
            "Time to archive a dialog, lock wait included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reply_seconds = Histogram(
            "archiver_reply_seconds",
            "Time from the question to the journaled reply.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.reply_errors = Counter(
            "archiver_reply_errors", "Failed replies, by kind.", ["kind"], registry=r
        )
        self.refused = Counter(
            "archiver_chats_refused",
            "Chats refused before journaling, by code.",
            ["code"],
            registry=r,
        )
        self.sweeps = Counter("archiver_sweeps", "Sweeper runs.", registry=r)
        self.damaged = Counter(
            "archiver_journals_damaged",
            "Journals damaged beyond repair, moved aside (current.yaml.damaged-*).",
            registry=r,
        )
        self.pruned = Counter(
            "archiver_archives_pruned", "Archives deleted by retention.", registry=r
        )

    def archived_by_reason(self) -> dict[str, int]:
        """``archiver_dialogs_archived`` as ``{reason: count}`` (the health route's view)."""
        return {
            sample.labels["reason"]: int(sample.value)
            for metric in self.archived.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.value
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)
