"""``--runs N``: each benchmark N times in a row, then each figure's worst and median.

A figure that doubles when another process runs is not a property of the code, so the
figures are judged by the worst of N consecutive runs, each beside its floor from the
same run (the floor of the worst run, and the floors' median). The machine's load
average at the start of each run is printed with them: the figures mean little without.

Only the benchmarks with a floor per run have figures here (journal and the live ones);
``search`` and ``index`` already report a median of several runs and run once.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.live import percentile

ONCE = {"search", "index"}  # a median of 5 runs each already, and minutes long


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    value: float
    floor: float | None = None
    floor_name: str = ""
    higher_is_better: bool = False


def _kb_per_sub(result: dict[str, Any]) -> float:
    top = result["steps"][-1]
    return float((top["rss_kb"] - result["base_kb"]) / top["held"])


def _subscriptions(results: dict[str, Any]) -> list[Figure]:
    a, f = results["archiver"], results["bare ASGI"]
    held = a["steps"][-1]["held"]
    memory = f"memory per idle subscription ({held:,})"
    figures = [Figure(memory, "KB", _kb_per_sub(a), _kb_per_sub(f), "bare ASGI")]
    for phase, what in (("grow", "growing"), ("churn", "holding")):
        figures.append(
            Figure(
                f"connect p99, {what}",
                "ms",
                percentile(a[phase]["ms"], 0.99),
                percentile(f[phase]["ms"], 0.99),
                "bare ASGI",
            )
        )
        figures.append(
            Figure(f"connect, {what}: longest full GC", "ms", float(a[phase]["gc"]["full_max_ms"]))
        )
        stall = float(a[phase]["gc"].get("stall_max_ms", 0.0))
        floor_stall = float(f[phase]["gc"].get("stall_max_ms", 0.0))
        figures.append(
            Figure(f"connect, {what}: longest loop stall", "ms", stall, floor_stall, "bare ASGI")
        )
    return figures


def _archive(results: dict[str, Any]) -> list[Figure]:
    a, f = results["archiver"], results["bare ASGI + rename"]
    figures = []
    for phase in ("paced", "burst"):
        figures.append(
            Figure(
                f"disconnect to archive, {phase}, p99",
                "ms",
                percentile(a[phase]["ms"], 0.99),
                percentile(f[phase]["ms"], 0.99),
                "bare ASGI + rename",
            )
        )
    missing = sum(a[p]["missing"] for p in ("paced", "burst"))
    figures.append(Figure("disconnect to archive, missing", "", float(missing)))
    return figures


def _chat(results: dict[str, Any]) -> list[Figure]:
    a, f = results["archiver"], results["Starlette JSON"]
    return [
        Figure("chat throughput", "/s", a["per_s"], f["per_s"], "Starlette JSON", True),
        Figure(
            "chat p99", "ms", percentile(a["ms"], 0.99), percentile(f["ms"], 0.99), "Starlette JSON"
        ),
    ]


def _drain(results: dict[str, Any]) -> list[Figure]:
    a, f = results["archiver"], results["sse-starlette"]
    return [
        Figure("SIGTERM drain, exit", "s", a["exit_s"], f["exit_s"], "sse-starlette"),
        Figure("SIGTERM drain, archived", "", float(a["archived"]), higher_is_better=True),
        Figure("SIGTERM drain, abrupt", "", float(a["abrupt"])),
    ]


def _journal(results: dict[str, Any]) -> list[Figure]:
    last = max(results["archiver"])
    floor = results["os.write (floor)"][last]
    return [
        Figure(
            f"journal append median, msg {last}", "us", results["archiver"][last], floor, "os.write"
        )
    ]


def _cross(results: dict[str, Any]) -> list[Figure]:
    ms, same = results["ms"]["cross"], results["ms"]["same"]
    figures = [
        Figure(f"cross-instance delivery {name}", "ms", percentile(ms, q), percentile(same, q))
        for name, q in (("p50", 0.5), ("p99", 0.99))
    ]
    figures = [Figure(f.name, f.unit, f.value, f.floor, "same instance") for f in figures]
    missing = float(sum(results["missing"].values()))
    return [*figures, Figure("cross-instance delivery, missing", "", missing)]


def _workers(results: dict[str, Any]) -> list[Figure]:
    floor = results["memory, 1 process"]["per_s"]
    return [
        Figure(f"chats/s, {name}", "/s", results[name]["per_s"], floor, "memory, 1 process", True)
        for name in ("redis, --workers 1", "redis, --workers 2")
    ]


def _redismem(results: dict[str, Any]) -> list[Figure]:
    redis, memory = results["redis broker"], results["memory broker"]
    held = redis["steps"][-1]["held"]
    name = f"memory per idle subscription, Redis ({held:,})"
    return [Figure(name, "KB", _kb_per_sub(redis), _kb_per_sub(memory), "memory broker")]


FIGURES: dict[str, Callable[[dict[str, Any]], list[Figure]]] = {
    "cross": _cross,
    "workers": _workers,
    "redismem": _redismem,
    "journal": _journal,
    "subscriptions": _subscriptions,
    "archive": _archive,
    "chat": _chat,
    "drain": _drain,
}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 or unit in ("", "/s") else f"{value:.1f}"
    return f"{text} {unit}".strip()


def repeat(name: str, func: Callable[..., Any], runs: int, quick: bool) -> None:
    """Run ``func`` ``runs`` times (its tables printed each time), then the summary."""
    per_run: list[list[Figure]] = []
    loads: list[str] = []
    for n in range(runs):
        loads.append(_load())
        print(f"-- {name}, run {n + 1} of {runs} (load average {loads[-1]})", flush=True)
        results = func(quick=quick)
        if name in FIGURES and results is not None:  # None: it could not run (no Redis)
            per_run.append(FIGURES[name](results))
        print(flush=True)
    if per_run:
        summarize(name, per_run, loads)


def summarize(name: str, per_run: list[list[Figure]], loads: list[str]) -> None:
    runs = len(per_run)
    print(f"{name}: worst and median of {runs} runs, each beside its floor from the same run")
    print(f"(load average 1/5/15 min at each run's start: {'; '.join(loads)})")
    print(
        f"{'figure':44}{'worst':>12}{'median':>12}{'floor, worst run':>18}{'floor median':>14}"
        "  floor"
    )
    for i, first in enumerate(per_run[0]):
        row = [r[i] for r in per_run]
        pick = max if not first.higher_is_better else min
        worst = pick(row, key=lambda f: f.value)
        median = statistics.median(f.value for f in row)
        floors = [f.floor for f in row if f.floor is not None]
        floor_median = statistics.median(floors) if floors else None
        print(
            f"{first.name:44}{_num(worst.value, first.unit):>12}{_num(median, first.unit):>12}"
            f"{_num(worst.floor, first.unit):>18}{_num(floor_median, first.unit):>14}"
            f"  {first.floor_name}"
        )
    print(flush=True)
