"""``python -m bench {journal,search,all} [--quick]``."""

from __future__ import annotations

import argparse

from bench import journal, search

BENCHMARKS = {"journal": journal.run, "search": search.run}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--quick", action="store_true", help="small scale, a few seconds")
    args = parser.parse_args()
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    for name in names:
        print(f"== {name}")
        BENCHMARKS[name](quick=args.quick)
        print()


if __name__ == "__main__":
    main()
