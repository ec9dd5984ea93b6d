"""The benchmarks still run: ``python -m bench all --quick`` prints every table.

Only that each table is there, with its header and its rows; never a timing (figures
belong to docs/performance.md, taken on a known machine).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cluster import missing_redis
from tests.helpers import unavailable

ROOT = Path(__file__).parent.parent

# benchmark -> lines (regexes) its table must contain
TABLES = {
    "journal": [r"^\s+msg 10\s+msg 100", r"^archiver\s+\d", r"^os\.write \(floor\)\s+\d"],
    "search": [r"^command\s+seconds", r"^archiver list --json\s+\d", r"^grep -rl \w+\s+\d"],
    "index": [
        r"^measure\s+archiver\s+target\s+floor",
        r"^index build \(reindex\)\s+\d+\.\d s\s+<= 60 s\s+read ",
        r"^update, per archive\s+\d+\.\d+ ms\s+<= 2 ms\s+parse ",
        r"^  a late archive \(older ended\)\s+\d+\.\d+ ms\s+parse ",
        r"^index size\s+\d",
        r"^GET /health \(floor\)\s+\d",
        r"^GET /search rare \(\w+\)\s+\d+\.\d / \d+\.\d ms\s+<= 20 / 100 ms\s+grep -rl \d+ ms",
        r"^GET /search moderate",
        r"^GET /search common",
        r"^  rare, user:\w+\s+\d+\.\d / \d+\.\d ms\s+<= 20 / 100 ms",
        r"^  moderate, user:\w+\s+\d+\.\d / \d+\.\d ms\s+<= 20 / 100 ms",
        r"^  common, user:\w+\s+\d+\.\d / \d+\.\d ms\s+<= 20 / 100 ms",
        r"^  common: bm25 over a window \(\d+\)\s+\d",
        r"^  common: bm25 over all \(exact\)\s+\d",
        r"^archiver search \(process\)\s+\d+\.\d+ s\s+<= 0\.3 s\s+start-up",
        r"^archiver list\s+\d+\.\d+ s\s+<= 1 s\s+start-up",
        r"^archiver list --json\s+\d",
    ],
    "subscriptions": [
        r"^idle subscriptions",
        r"^\s+100\s+300\s+RSS at max\s+pings late",
        r"^archiver\s+\d+\.\d\s+\d+\.\d\s+\d+ MB\s+\d+/300",
        r"^sse-starlette\s+\d",
        r"^bare ASGI\s+\d",
        r"^/ bare ASGI\s+\d",
        r"^connect latency, new subscriber to `ready`, ms: growing 100 -> 300",
        r"^\s+growing p50\s+p99\s+max\s+full GCs\s+longest\s+holding p50\s+p99",
        r"^archiver(\s+\d+\.\d){2}\s+\d+\s+\d+\s+\d+ms(\s+\d+\.\d){2}\s+\d+\s+\d+\s+\d+ms\s+0$",
        r"^/ sse-starlette\s+\d+\.\d+x\s+\d+\.\d+x$",
    ],
    "archive": [
        r"^disconnect -> archive file",
        r"^\s+paced p50\s+p99\s+max\s+burst p50",
        r"^archiver\s+\d+\.\d.*\s0$",
        r"^bare ASGI \+ rename\s+\d+\.\d.*\s0$",
    ],
    "chat": [
        r"^chat throughput",
        r"^\s+chats/s\s+p50 ms\s+p99 ms\s+errors",
        r"^Starlette JSON\s+\d+\s+\d+\.\d+\s+\d+\.\d+\s+0$",
        r"^archiver\s+\d+\s+\d+\.\d+\s+\d+\.\d+\s+0$",
        r"^archiver / floor\s+\d",
    ],
    "drain": [
        r"^drain: SIGTERM with 300 streams",
        r"^\s+exit s\s+streams s\s+archived\s+shutdown ev\s+clean ends\s+abrupt",
        r"^sse-starlette\s+\d+\.\d+\s+\d+\.\d+\s+-\s",
        # every dialog archived, every stream told and ended cleanly, nothing cut
        r"^archiver\s+\d+\.\d+\s+\d+\.\d+\s+300\s+300\s+300\s+0$",
    ],
    "cross": [
        r"^cross-instance delivery: 10 users streaming from X, 200 chats",
        r"^\s+p50 ms\s+p99 ms\s+max ms\s+chats\s+missing$",
        # every chat delivered to the stream on X, whichever instance took it
        r"^same instance \(floor\)\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d\s+100\s+0$",
        r"^cross instance \(Y->X\)\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d\s+100\s+0$",
        r"^cross - same\s+-?\d+\.\d+\s+-?\d+\.\d+$",
        r"^\(errors 0; missing: ",
    ],
    "workers": [
        r"^chat throughput by workers: 8 users",
        r"^\s+chats/s\s+p50 ms\s+p99 ms\s+errors\s+lost$",
        r"^memory, 1 process\s+\d+\s+\d+\.\d+\s+\d+\.\d+\s+0\s+0$",
        r"^redis, --workers 1\s+\d+\s+\d+\.\d+\s+\d+\.\d+\s+0\s+0$",
        r"^redis, --workers 2\s+\d+\s+\d+\.\d+\s+\d+\.\d+\s+0\s+0$",  # no reply lost
        r"^redis, --workers 2 / floor\s+\d+\.\d+x$",
    ],
    "redismem": [
        r"^idle subscriptions by broker",
        r"^\s+100\s+300\s+RSS at max$",
        r"^memory broker\s+\d+\.\d\s+\d+\.\d\s+\d+ MB$",
        r"^redis broker\s+\d+\.\d\s+\d+\.\d\s+\d+ MB$",
        r"^redis - memory\s+[+-]\d+\.\d\s+[+-]\d+\.\d$",
        r"^redis-server, KB\s+-?\d+\.\d\d\s+-?\d+\.\d\d$",
    ],
}
# These start a redis-server of their own; without one they print why instead.
NEEDS_REDIS = ("cross", "workers", "redismem")


def _bench(tmp_path: Path, timeout: float, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS`` with no ARCHIVER_* setting, its temporary files in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    env["TMPDIR"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _sections(output: str) -> dict[str, str]:
    parts = re.split(r"^== (\w+)$", output, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.timeout(300)
def test_every_benchmark_prints_its_table(tmp_path: Path) -> None:
    result = _bench(tmp_path, 280, "all", "--quick")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sections = _sections(result.stdout)
    assert list(sections) == list(TABLES)
    redis = missing_redis()
    for name, patterns in TABLES.items():
        if redis is not None and name in NEEDS_REDIS:
            assert f"(not run: {redis})" in sections[name]
            continue
        for pattern in patterns:
            assert re.search(pattern, sections[name], re.M), (
                f"{name}: no line matching {pattern!r} in:\n{sections[name]}"
            )
    if redis is not None:
        unavailable(f"{', '.join(NEEDS_REDIS)} did not run: {redis}")


@pytest.mark.timeout(200)
def test_runs_prints_each_figures_worst_and_median_beside_its_floor(tmp_path: Path) -> None:
    """``--runs 2``: each run's table, then one row per figure (never a timing checked)."""
    result = _bench(tmp_path, 180, "archive", "--quick", "--runs", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert len(re.findall(r"^-- archive, run \d of 2 \(load average [\d. ]+\)$", out, re.M)) == 2
    assert len(re.findall(r"^archiver\s+\d+\.\d", out, re.M)) == 2  # each run's table
    assert re.search(r"^archive: worst and median of 2 runs", out, re.M)
    assert re.search(
        r"^\(load average 1/5/15 min at each run's start: [\d. ]+; [\d. ]+\)$", out, re.M
    )
    assert re.search(
        r"^figure\s+worst\s+median\s+floor, worst run\s+floor median\s+floor$", out, re.M
    )
    for phase in ("paced", "burst"):
        assert re.search(
            rf"^disconnect to archive, {phase}, p99(\s+[\d,]+(\.\d)? ms){{4}}"
            r"\s+bare ASGI \+ rename$",
            out,
            re.M,
        ), out
    assert re.search(r"^disconnect to archive, missing\s+\d+\s+\d+\s+-\s+-\s*$", out, re.M), out
