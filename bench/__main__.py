"""``python -m bench {journal,...,drain,cross,workers,redismem,all} [--quick] [--runs N]``.

The live benchmarks (subscriptions, archive, chat, drain) start their servers on
loopback and drive them from a separate client process; each prints a table with
archiver and its floor measured in the same run. cross, workers and redismem (several
instances, ARCHIVER_BROKER) start a redis-server of their own; without one installed they
print why they did not run. ``--runs N`` runs each N times in a row and then prints each
figure's worst and median beside its floors (bench/runs.py).
"""

from __future__ import annotations

import argparse

from bench import (
    archive,
    chat,
    cross,
    drain,
    index,
    journal,
    redismem,
    runs,
    search,
    subscriptions,
    workers,
)

BENCHMARKS = {
    "journal": journal.run,
    "search": search.run,
    "index": index.run,
    "subscriptions": subscriptions.run,
    "archive": archive.run,
    "chat": chat.run,
    "drain": drain.run,
    "cross": cross.run,
    "workers": workers.run,
    "redismem": redismem.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--quick", action="store_true", help="small scale, a few seconds")
    parser.add_argument(
        "--runs", type=int, default=1, help="run each N times; print worst and median of N"
    )
    args = parser.parse_args()
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    for name in names:
        print(f"== {name}", flush=True)
        if args.runs > 1 and name not in runs.ONCE:
            runs.repeat(name, BENCHMARKS[name], args.runs, args.quick)
        else:
            BENCHMARKS[name](quick=args.quick)
            print(flush=True)


if __name__ == "__main__":
    main()
