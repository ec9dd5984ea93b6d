"""The search index at scale: every figure issue 14's Targets name, beside a floor from
the same run, on a generated data directory (bench/search.py's generator).

* **build**: ``Index.rebuild()`` from scratch (what ``archiver reindex`` does); floor:
  reading every archive file (``cat``) and parsing each (``parse_dialog``).
* **keeping current**: ms per archive for ``Index.update([path])`` of new archives, one
  call each (the worst case; the server's worker batches); floor: parsing the file. Once
  for archives newer than every indexed one (as archives land), once for late ones
  (ended within the corpus's year: they go between indexed archives, see index_rowids).
* **GET /search** p50/p99 for a rare, a moderate and a common word, first page of 50
  hits, against a real ``archiver serve`` on loopback; floors: ``GET /health`` on the
  same server, and ``grep -rl WORD`` over the files (target: at least 10x faster).
* The three words once more, one user's (``user:``, what a non-admin's search is: the
  same targets), and the common word's ranking query alone, windowed (what the service
  runs) beside the exact order (bm25 over every match, what it ran before the windows).
* **archiver search WORD --json** end to end, a fresh process (target <= 0.3 s);
  floor: ``python -c 'import archiver.cli'``.
* **index size** against the archives' size; **archiver list --json** (target <= 1 s).

Run: ``python -m bench index`` (100,000 archives; ``--quick`` for 300), or
``python -m bench.index`` with ``--archives N`` for another size and ``--corpus DIR``,
which generates the archives into DIR once and reuses them on later runs (generating
100,000 takes ~40 s; ``python -m bench`` takes neither option).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt

from archiver import query
from archiver.clikit import SEARCH_WORKERS
from archiver.dialogfile import read_with_offsets
from archiver.index import Index
from archiver.ranking import WINDOW
from bench.search import WORDS, generate, timed

ARCHIVES = 100_000
QUICK_ARCHIVES = 300
UPDATES = 200  # new archives indexed one call each
SECRET = "bench-secret-" + "x" * 32
USER = "user001"  # one of bench.search.generate's users


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _floor_read(files: list[Path]) -> tuple[float, float]:
    """Seconds to read every file, and to read and parse every file."""
    started = time.perf_counter()
    subprocess.run(["cat", *map(str, files[:1])], capture_output=True, check=False)
    for path in files:
        path.read_bytes()
    read = time.perf_counter() - started
    started = time.perf_counter()
    for path in files:
        read_with_offsets(path.read_bytes())
    return read, time.perf_counter() - started


def _updates(data: Path, index: Index, count: int, late: bool) -> tuple[float, float]:
    """ms per archive: Index.update of ``count`` new archives one at a time; parse only.
    ``late``: they ended within the corpus's year (a catch-up, an import: they go between
    indexed archives); else after every indexed one, as archives land. The new archives
    are deleted again (and dropped from the index) afterwards."""
    fresh = Path(tempfile.mkdtemp(dir=data.parent))
    generate(fresh, count, seed=99, start=None if late else time.time() + 2 * 365 * 86400)
    moved = []
    # In the order they end (by name, then user), as archives land; one user's after
    # another's would be 200 late archives into one stretch (see index_rowids).
    for path in sorted(fresh.rglob("*.yaml"), key=lambda p: (p.name, p.parts[-4])):
        target = data / path.relative_to(fresh)
        target = target.with_name("2099" + target.name[4:])  # no clash with existing names
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
        moved.append(target)
    shutil.rmtree(fresh)
    started = time.perf_counter()
    for path in moved:
        read_with_offsets(path.read_bytes())
    floor = (time.perf_counter() - started) * 1000 / len(moved)
    started = time.perf_counter()
    for path in moved:
        index.update([path])
    per = (time.perf_counter() - started) * 1000 / len(moved)
    for path in moved:
        path.unlink()
    index.update(moved)
    return per, floor


def _serve(data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    env |= {"ARCHIVER_JWT_SECRET": SECRET, "ARCHIVER_ACCESS_LOG": "false"}
    env["ARCHIVER_LOG_LEVEL"] = "WARNING"
    args = [sys.executable, "-m", "archiver", "serve", "--port", str(port), "--data", str(data)]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _latencies(client: httpx.Client, path: str, runs: int) -> list[float]:
    client.get(path).raise_for_status()  # warm
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        client.get(path).raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return sorted(samples)


def _p(samples: list[float], fraction: float) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * fraction))]


def _query_ms(index: Index, word: str, runs: int) -> tuple[float, float]:
    """The ranking query alone, in process (no join, no file read): bm25 over every
    match, and over the newest window of matches (ranking.WINDOW)."""
    fts = query.parse(word).fts()
    every = "SELECT rowid FROM fts WHERE fts MATCH ? ORDER BY bm25(fts, 1.0, 0.0) LIMIT 50"
    newest = (
        "SELECT rowid FROM fts WHERE fts MATCH ? AND rowid >= (SELECT rowid FROM fts"
        " WHERE fts MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?)"
        " ORDER BY bm25(fts, 1.0, 0.0) LIMIT 50"
    )
    db = index._db()
    out = []
    for sql, args in ((every, (fts,)), (newest, (fts, fts, WINDOW - 1))):
        samples = []
        for _ in range(runs + 1):
            started = time.perf_counter()
            db.execute(sql, args).fetchall()
            samples.append((time.perf_counter() - started) * 1000)
        out.append(statistics.median(samples[1:]))
    return out[0], out[1]


def run(
    quick: bool = False,
    out: Callable[[str], None] = print,
    archives: int | None = None,
    corpus: Path | None = None,
) -> dict[str, float]:
    count = archives or (QUICK_ARCHIVES if quick else ARCHIVES)
    runs = 3 if quick else 5
    requests = 20 if quick else 200
    figures: dict[str, float] = {}
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = (corpus or Path(tmp)) / "data"
        started = time.perf_counter()
        reused = (data / "users").is_dir()  # generated by an earlier run
        messages = -1 if reused else generate(data, count)[1]
        shutil.rmtree(data / ".index", ignore_errors=True)
        files = sorted(data.rglob("*.yaml"))
        size = sum(p.stat().st_size for p in files)
        made = "reused" if messages < 0 else f"generated in {time.perf_counter() - started:.1f} s"
        out(
            f"{len(files):,} archives, {messages if messages >= 0 else '?'} messages, "
            f"{size / 1e6:.1f} MB ({made}); {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
        )
        read, parsed = _floor_read(files)
        index = Index(data)
        built = index.rebuild(workers=SEARCH_WORKERS)  # what archiver reindex does
        figures["build"] = built.ms / 1000
        rows.append(
            (
                "index build (reindex)",
                f"{built.ms / 1000:.1f} s",
                "<= 60 s",
                f"read {read:.1f} s, read+parse {parsed:.1f} s",
            )
        )
        per, floor = _updates(data, index, min(UPDATES, count), late=False)
        figures["update_ms"] = per
        rows.append(("update, per archive", f"{per:.2f} ms", "<= 2 ms", f"parse {floor:.2f} ms"))
        per, floor = _updates(data, index, min(UPDATES, count), late=True)
        figures["late_update_ms"] = per
        rows.append(
            ("  a late archive (older ended)", f"{per:.2f} ms", "", f"parse {floor:.2f} ms")
        )
        index._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL is transient
        db_size = sum(p.stat().st_size for p in index.path.parent.iterdir())
        figures["size_ratio"] = db_size / size
        rows.append(
            (
                "index size",
                f"{db_size / 1e6:.1f} MB",
                f"<= {size / 1e6:.1f} MB",
                f"{db_size / size:.0%} of the archives",
            )
        )
        common_all, common_newest = _query_ms(index, WORDS["common"], runs)
        index.close()

        port = _free_port()
        server = _serve(data, port)
        token = jwt.encode(
            {"sub": "bench", "role": "admin", "exp": time.time() + 3600}, SECRET, algorithm="HS256"
        )
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                timeout=60,
                headers={"Authorization": f"Bearer {token}"},
            ) as client:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        client.get("/health").raise_for_status()
                        break
                    except httpx.HTTPError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                health = _latencies(client, "/health", requests)
                rows.append(
                    (
                        "GET /health (floor)",
                        f"{_p(health, 0.5):.1f} / {_p(health, 0.99):.1f} ms",
                        "",
                        "p50 / p99",
                    )
                )
                for label, word in WORDS.items():
                    lat = _latencies(client, f"/search?q={word}&limit=50", requests)
                    grep, _, listed = timed(["grep", "-rl", word, str(data)], runs)
                    p50, p99 = _p(lat, 0.5), _p(lat, 0.99)
                    figures[f"search {label} p50"], figures[f"search {label} p99"] = p50, p99
                    rows.append(
                        (
                            f"GET /search {label} ({word})",
                            f"{p50:.1f} / {p99:.1f} ms",
                            "<= 20 / 100 ms",
                            f"grep -rl {grep * 1000:.0f} ms ({len(listed.splitlines())} files):"
                            f" {grep * 1000 / p50:.0f}x (>= 10x)",
                        )
                    )
                for label, word in WORDS.items():  # what a user's own search runs
                    one = f"{word} user:{USER}"
                    lat = _latencies(client, f"/search?q={quote(one)}&limit=50", requests)
                    p50, p99 = _p(lat, 0.5), _p(lat, 0.99)
                    figures[f"user {label} p50"], figures[f"user {label} p99"] = p50, p99
                    rows.append(
                        (
                            f"  {label}, user:{USER}",
                            f"{p50:.1f} / {p99:.1f} ms",
                            "<= 20 / 100 ms",
                            "p50 / p99 (a user's own search)",
                        )
                    )
        finally:
            server.terminate()
            server.wait(timeout=60)
        rows.append(
            (
                f"  common: bm25 over a window ({WINDOW})",
                f"{common_newest:.1f} ms",
                "",
                "query alone",
            )
        )
        rows.append(("  common: bm25 over all (exact)", f"{common_all:.1f} ms", "", "query alone"))
        startup, _, _ = timed([sys.executable, "-c", "import archiver.cli"], runs)
        search, _, _ = timed(
            [
                sys.executable,
                "-m",
                "archiver",
                "search",
                WORDS["rare"],
                "--json",
                "--data",
                str(data),
            ],
            runs,
        )
        figures["cli search"] = search
        rows.append(
            (
                "archiver search (process)",
                f"{search:.3f} s",
                "<= 0.3 s",
                f"start-up {startup:.3f} s",
            )
        )
        listed = {}
        for flags in ((), ("--json",)):
            args = [sys.executable, "-m", "archiver", "list", *flags, "--data", str(data)]
            listed["".join(flags)], _, _ = timed(args, runs)
        figures["list"], figures["list json"] = listed[""], listed["--json"]
        from_files, _, _ = timed(
            [
                *("env", "ARCHIVER_SEARCH_INDEX=false", sys.executable, "-m", "archiver"),
                *("list", "--json", "--data", str(data)),
            ],
            runs,
        )
        rows.append(("archiver list", f"{listed['']:.3f} s", "<= 1 s", f"start-up {startup:.3f} s"))
        rows.append(
            (
                "archiver list --json",
                f"{listed['--json']:.3f} s",
                "<= 1 s",
                f"from the files {from_files:.3f} s",
            )
        )
    out(f"load average at the end: {os.getloadavg()[0]:.1f}")
    out(f"{'measure':34}{'archiver':>18}  {'target':<16}floor")
    for measure, value, target, floor_text in rows:
        out(f"{measure:34}{value:>18}  {target:<16}{floor_text}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small and fast")
    parser.add_argument("--archives", type=int, default=None, help="how many archives")
    parser.add_argument("--corpus", type=Path, default=None, help="generate once into DIR, reuse")
    args = parser.parse_args()
    run(quick=args.quick, archives=args.archives, corpus=args.corpus)


if __name__ == "__main__":
    main()
