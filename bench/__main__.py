"""``python -m bench {journal,search,index,subscriptions,archive,chat,drain,all} [--quick]``.

The live benchmarks (subscriptions, archive, chat, drain) start their servers on
loopback and drive them from a separate client process; each prints a table with
archiver and its floor measured in the same run.
"""

from __future__ import annotations

import argparse

from bench import archive, chat, drain, index, journal, search, subscriptions

BENCHMARKS = {
    "journal": journal.run,
    "search": search.run,
    "index": index.run,
    "subscriptions": subscriptions.run,
    "archive": archive.run,
    "chat": chat.run,
    "drain": drain.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--quick", action="store_true", help="small scale, a few seconds")
    args = parser.parse_args()
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    for name in names:
        print(f"== {name}", flush=True)
        BENCHMARKS[name](quick=args.quick)
        print(flush=True)


if __name__ == "__main__":
    main()
