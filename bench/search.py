"""Listing and searching a large archive, against ``grep -rl`` on the same tree, in one run.

A generator writes a data directory of 10,000 archives (~200,000 messages, ~60 users) in
the real on-disk format: support-chat dialogs of 2 to 40 messages with varied text
(one-liners, colons and quotes that force quoting, multi-line answers, non-ASCII).
It writes the files directly with :mod:`archiver.journal`'s text functions, which is
what an append and an archive produce, only faster.

Then it times, each as a fresh process (what a person at a shell waits for; the
interpreter's start-up is measured alone too):

* ``archiver list --json`` over everything (target: <= 1 s);
* ``archiver search WORD --json`` for a rare, a moderate and a common word
  (target: <= 3x grep);
* ``grep -rl WORD`` on the same tree: the floor; and ``grep -ri WORD``, which like
  search ignores case and prints what matched, for comparison.

Each figure is the median of a few runs with a warm page cache.

Run: ``python -m bench search`` (``--quick`` for ~300 archives).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archiver.dialogfile import Message, header_text, message_text, trailer_text, utc_stamp
from archiver.layout import user_dir_name

ARCHIVES = 10_000
QUICK_ARCHIVES = 300
USERS = 60
RUNS = 5
HIT = b'{"user": '  # how each element of `archiver search --json` starts
# A rare word (~0.2% of dialogs), a moderate one (~5%), a common one (most dialogs).
WORDS = {"rare": "chargeback", "moderate": "warranty", "common": "order"}

FIRST = ["Anna", "Ben", "Chloé", "Dmitri", "Eva", "Farid", "Grace", "Hiro", "Inès", "Jon"]
PRODUCTS = [
    "the blue kettle",
    "my e-bike battery",
    "the standing desk",
    "a pair of trail shoes",
    "the espresso machine",
    "the 27-inch monitor",
    "my phone case",
    "the garden hose",
    "a wool blanket",
    "the noise-cancelling headphones",
]
OPENERS = [
    "Hi, I ordered {product} last week and it still hasn't arrived.",
    "Hello! Can you tell me where my order #{order} is?",
    "My invoice for order {order} shows the wrong address: can you fix it?",
    "I'd like to return {product}. How does that work?",
    "The app keeps logging me out, and I can't reset my password.",
    "Is {product} covered by the warranty if it stopped working after a month?",
    "Why was I charged twice for order #{order}?",
    "Do you ship to Zürich? The checkout says 'not available'.",
    "hey, quick question about delivery times",
    "I want to change the delivery date for order {order}.",
]
FOLLOWUPS = [
    "Thanks, that helps.",
    "OK. And how long will that take?",
    "It says 'processing' since Monday: is that normal?",
    "No, the tracking number doesn't work.",
    "Could you send me a new invoice instead?",
    "Great, thank you {name}!",
    "I already tried that twice.",
    "Yes, the address is Hauptstraße 12, 10115 Berlin.",
    "Can I talk to a person?",
    "What about the refund?",
]
ANSWERS = [
    "Thanks for reaching out, {name}. I've checked order {order}: it left our warehouse "
    "yesterday and should arrive within 2-3 working days.",
    "I'm sorry about that! Here is what you can do:\n- open Settings > Account\n"
    "- choose 'Reset password'\n- follow the link we email you (valid for 30 minutes)",
    "Returns are free within 30 days. I've created a return label for {product}; "
    "you'll find it in your inbox.",
    "I can see the double charge. One of them is a pre-authorisation and will disappear "
    "within 5 days; if it doesn't, we'll refund it.",
    "Good news: {product} has a 2-year guarantee, so a replacement is on its way.\n"
    "You don't need to send the old one back.",
    "Yes, we ship to Switzerland! Delivery takes 4-6 days and customs are included.",
    "I've updated the delivery date to Friday. You'll get a confirmation email shortly.",
    "Of course: the new invoice for order {order} is attached. Anything else?",
    "Our courier had a delay in your area: your parcel is now scheduled for tomorrow.",
    "I understand, that's frustrating. I've escalated this to our logistics team "
    "(ticket {ticket}); they'll contact you within 24 hours.",
]
RARE = [
    "My bank says it will open a chargeback if this isn't solved today.",
    "We've received a chargeback notice for order {order}; no action is needed from you.",
]
LONG_FILLER = (
    "For context: I have been a customer for years and never had a problem like this. "
    "The package was supposed to come on Tuesday, then Thursday, and now the tracking "
    "page shows nothing at all. I'd really appreciate a clear answer this time. "
)


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        product=rng.choice(PRODUCTS),
        order=rng.randint(100_000, 999_999),
        name=rng.choice(FIRST),
        ticket=f"T-{rng.randint(1000, 9999)}",
    )


def _dialog_texts(rng: random.Random) -> list[tuple[str, str]]:
    count = rng.choice([2, 4, 6, 10, 14, 20, 24, 30, 36, 40])
    texts: list[tuple[str, str]] = []
    for i in range(count):
        role = "user" if i % 2 == 0 else "assistant"
        if role == "user":
            text = _fill(rng.choice(OPENERS if i == 0 else FOLLOWUPS), rng)
            if rng.random() < 0.1:
                text += " " + LONG_FILLER * rng.randint(1, 3)
        else:
            text = _fill(rng.choice(ANSWERS), rng)
        if rng.random() < 0.0002 * (40 / count):
            text = _fill(rng.choice(RARE), rng)
        texts.append((role, text))
    if rng.random() < 0.01:
        texts.append(("error", "upstream: the reply producer timed out after 30 s"))
    return texts


def _reply_fields(role: str, rng: random.Random) -> dict[str, Any]:
    """What the journal writes on an assistant or error entry now: its upstream, and an
    assistant's first-token time (a quarter of the corpus predates them: none)."""
    if role == "user" or rng.random() < 0.25:
        return {}
    upstream = rng.choice(["echo", "openai", "n8n"])
    if role == "error":
        return {"upstream": upstream}
    return {"upstream": upstream, "first_token_ms": rng.randrange(40, 4000)}


def generate(
    root: Path, archives: int, seed: int = 7, start: float | None = None
) -> tuple[int, int]:
    """Write ``archives`` archive files under ``root``, spread over a year from ``start``
    (default: a year ago); return (archives, messages)."""
    rng = random.Random(seed)
    extra = random.Random(seed + 1)  # its own stream: the texts stay what they were
    users = [f"user{i:03d}" for i in range(USERS - 2)] + ["auth0|4242", "team/ops"]
    start = time.time() - 365 * 86400 if start is None else start
    messages = 0
    for n in range(archives):
        user = users[n % len(users)]
        directory = root / "users" / user_dir_name(user) / "dialogs" / "archived"
        if n < len(users):
            directory.mkdir(parents=True, exist_ok=True)
        t = start + n * (365 * 86400 / archives)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))
        dialog = f"d-{stamp}-{n:06x}"
        parts = [header_text(user, dialog, utc_stamp(t))]
        for seq, (role, text) in enumerate(_dialog_texts(rng), start=1):
            t += rng.uniform(1, 90)
            fields = _reply_fields(role, extra)
            message = Message(seq=seq, role=role, at=utc_stamp(t), text=text, **fields)
            parts.append(message_text(message))
            messages += 1
        t += 300
        parts.append(trailer_text(utc_stamp(t), rng.choice(["disconnect", "timeout", "user"])))
        parts.append("...\n")
        name = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(t)) + ".yaml"
        (directory / name).write_text("".join(parts), encoding="utf-8")
    return archives, messages


def timed(args: list[str], runs: int) -> tuple[float, int, bytes]:
    """Median wall time in seconds of ``args`` as a process, its exit code and output."""
    samples = []
    result = subprocess.run(args, capture_output=True, check=False)  # warm the cache
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(args, capture_output=True, check=False)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), result.returncode, result.stdout


def run(quick: bool = False, out: Callable[[str], None] = print) -> dict[str, float]:
    archives = QUICK_ARCHIVES if quick else ARCHIVES
    runs = 3 if quick else RUNS
    grep = shutil.which("grep")
    if grep is None:
        out("grep not found: nothing to compare against")
        return {}
    archiver = [sys.executable, "-m", "archiver"]
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        count, messages = generate(data, archives)
        size = sum(p.stat().st_size for p in data.rglob("*.yaml"))
        out(
            f"{count:,} archives, {messages:,} messages, {size / 1e6:.1f} MB, {USERS} users "
            f"(generated in {time.perf_counter() - started:.1f} s); median of {runs} runs, "
            f"warm cache, {os.cpu_count()} cores"
        )
        startup, _, _ = timed([sys.executable, "-c", "import archiver.cli"], runs)
        listing, code, listed = timed([*archiver, "list", "--json", "--data", str(data)], runs)
        assert code == 0, listed[:200]
        figures["startup"], figures["list"] = startup, listing
        rows = [("python -c 'import archiver.cli'", startup, "interpreter start-up", "")]
        rows.append(("archiver list --json", listing, f"{count} archives", "target <= 1 s"))
        for label, word in WORDS.items():
            floor, _, files = timed([grep, "-rl", word, str(data)], runs)
            search, code, found = timed(
                [*archiver, "search", word, "--json", "--data", str(data)], runs
            )
            figures[f"grep {label}"], figures[f"search {label}"] = floor, search
            ratio = f"{search / floor:.1f}x grep ({label} word; target <= 3x)"
            rows.append((f"grep -rl {word}", floor, f"{len(files.splitlines())} files", ""))
            lines, _, printed = timed([grep, "-ri", word, str(data)], runs)
            found_lines = f"{len(printed.splitlines())} lines"
            rows.append((f"grep -ri {word}", lines, found_lines, "(prints lines, any case)"))
            hits = f"{found.count(HIT)} messages"
            rows.append((f"archiver search {word} --json", search, hits, ratio))
        out(f"{'command':36}{'seconds':>8}  {'found':<18}")
        for command, seconds, found_text, note in rows:
            out(f"{command:36}{seconds:8.3f}  {found_text:<18}{note}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small and fast")
    args = parser.parse_args()
    run(quick=args.quick)


if __name__ == "__main__":
    main()
