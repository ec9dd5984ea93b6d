"""Per-append cost of the journal, against a naive journal and the floor, in one run.

One dialog grows to 1,000 messages of ~200 bytes. At messages 10, 100 and 1,000 it
reports the median and p99 cost of one append for:

* ``archiver``: ``Journal.append`` with ``fsync=no`` (flock, tail read, one pwrite);
* ``archiver+fdatasync``: the same with ``fsync=always`` (for reference; the target
  excludes fsync, and the disk here is a host cache);
* ``ruamel load+dump``: what a naive journal does: load the whole file, append, dump;
* ``ruamel dump 1 entry``: ruamel.yaml serializing just the new entry;
* ``os.write (floor)``: writing the same entry bytes to an open file.

Run: ``python -m bench journal`` (``--quick`` for a small, fast run).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ruamel.yaml import YAML

from archiver.dialogfile import Message, message_text, utc_stamp
from archiver.journal import Journal

POINTS = (10, 100, 1000)
WINDOW = 10  # appends around each point that count as "at" that point


def text_of(i: int) -> str:
    base = f"Message {i}: the customer asks about order #{1000 + i} and its delivery date. "
    return (base * 4)[:200]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_journal(root: Path, fsync: str, runs: int, upto: int) -> dict[int, list[float]]:
    """Grow ``runs`` dialogs to ``upto`` messages; collect timings around each point."""
    samples: dict[int, list[float]] = {p: [] for p in POINTS if p <= upto}
    for run in range(runs):
        journal = Journal(root / f"{fsync}-{run}", fsync=fsync)  # type: ignore[arg-type]
        for i in range(1, upto + 1):
            text = text_of(i)
            start = time.perf_counter_ns()
            journal.append("bench", "user", text)
            elapsed = (time.perf_counter_ns() - start) / 1000
            for point in samples:
                if point - WINDOW // 2 < i <= point + WINDOW // 2:
                    samples[point].append(elapsed)
    return samples


def _entry(i: int) -> dict[str, object]:
    return {"seq": i, "role": "user", "at": utc_stamp(), "text": text_of(i)}


def measure_naive(root: Path, reps: dict[int, int]) -> dict[int, list[float]]:
    """Load the whole journal with ruamel.yaml, append one entry, dump it all back."""
    yaml = YAML()
    yaml.width = 4096
    samples: dict[int, list[float]] = {}
    for point, count in reps.items():
        journal = Journal(root / f"naive-{point}", fsync="no")
        for i in range(1, point):
            journal.append("bench", "user", text_of(i))
        path = journal.layout.current_path("bench")
        original = path.read_bytes()
        samples[point] = []
        for _ in range(count):
            path.write_bytes(original)
            start = time.perf_counter_ns()
            with open(path) as fh:
                doc = yaml.load(fh)
            doc["messages"].append(_entry(point))
            with open(path, "w") as fh:
                yaml.dump(doc, fh)
            samples[point].append((time.perf_counter_ns() - start) / 1000)
    return samples


def measure_one_entry(count: int) -> list[float]:
    yaml = YAML()
    yaml.width = 4096
    out = []
    for i in range(count):
        start = time.perf_counter_ns()
        buf = io.StringIO()
        yaml.dump([_entry(i)], buf)
        buf.getvalue().encode()
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


def measure_floor(root: Path, count: int) -> list[float]:
    message = Message(seq=1, role="user", at=utc_stamp(), text=text_of(1))
    data = message_text(message).encode()
    fd = os.open(root / "floor", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    out = []
    try:
        for _ in range(count):
            start = time.perf_counter_ns()
            os.write(fd, data)
            out.append((time.perf_counter_ns() - start) / 1000)
    finally:
        os.close(fd)
    return out


def fmt(samples: list[float]) -> str:
    if not samples:
        return "-"
    return f"{statistics.median(samples):8.1f} / {percentile(samples, 0.99):8.1f}"


def run(quick: bool = False, out: Callable[[str], None] = print) -> dict[str, dict[int, float]]:
    runs = 3 if quick else 30
    upto = 100 if quick else 1000
    naive_reps = {10: 5, 100: 3} if quick else {10: 50, 100: 20, 1000: 5}
    points = [p for p in POINTS if p <= upto]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows: dict[str, dict[int, list[float]]] = {
            "archiver": measure_journal(root, "no", runs, upto),
            "archiver+fdatasync": measure_journal(root, "always", max(1, runs // 3), upto),
            "ruamel load+dump (naive)": measure_naive(root, naive_reps),
        }
        one = measure_one_entry(200 if quick else 2000)
        floor = measure_floor(root, 200 if quick else 2000)
        rows["ruamel dump 1 entry"] = {p: one for p in points}
        rows["os.write (floor)"] = {p: floor for p in points}
    out(f"journal append, one dialog growing to {upto} messages of ~200 bytes")
    out("cost per append in µs, median / p99 (perf_counter, this machine, one run)")
    header = f"{'':26}" + "".join(f"{'msg ' + str(p):>22}" for p in points)
    out(header + f"{'last/first':>12}")
    medians: dict[str, dict[int, float]] = {}
    for name, by_point in rows.items():
        medians[name] = {p: statistics.median(by_point[p]) for p in points if by_point.get(p)}
        cells = "".join(f"{fmt(by_point.get(p, [])):>22}" for p in points)
        m = medians[name]
        growth = f"{m[points[-1]] / m[points[0]]:10.2f}x" if len(m) == len(points) else "-"
        out(f"{name:26}{cells}{growth:>12}")
    floor_median = medians["os.write (floor)"][points[0]]
    ratios = "".join(f"{medians['archiver'][p] / floor_median:21.1f}x" for p in points)
    out(f"{'archiver / floor':26}{ratios}")
    naive = medians["ruamel load+dump (naive)"]
    speedup = "".join(
        f"{naive[p] / medians['archiver'][p]:21.0f}x" if p in naive else f"{'-':>22}"
        for p in points
    )
    out(f"{'naive / archiver':26}{speedup}")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small and fast")
    args = parser.parse_args()
    run(quick=args.quick)


if __name__ == "__main__":
    main()
