"""Crash at every point of a write: a live server SIGKILLs itself at a named step.

Each trial arms one fault point (``ARCHIVER_FAULT_POINT``, test-only, see journal.Fault),
drives chats, archives and disconnects until the server kills itself there, and starts
the next server on the same data directory, whose start-up recovery repairs and finishes
what the crash left. Some trials kill at a random moment instead (no hook). At the end
every message that got a 2xx is in exactly one file, in order, with its reply; every file
loads with PyYAML and ruamel.yaml; torn bytes are kept in ``current.yaml.torn-*``.

    pytest tests/test_reliability_crash.py                      # 26 trials
    ARCHIVER_SOAK=1 pytest tests/test_reliability_crash.py      # 208 trials
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers import Server, SSEClient, mint, soak, wait_for
from tests.invariants import Tally, check_exactly_once, stray_files, unloadable_archives

USERS = ["c0", "c1 ü", "c2/x|y"]
TRICKY = [
    "plain words",
    "two\nlines",
    "...",
    "- seq: 99\n  role: user",
    "ended: '2026-01-01T00:00:00.000Z'\nreason: user",
    "\n...\n",
    "no",
    "'quoted' \"double\"",
    "ünïcode ✓ 日本",
    "trailing space ",
    "#not a comment",
    "key: value",
    "x" * 3000,
]

# One trial: the fault points of consecutive server lives (None: killed at a random moment
# by the test), and the settings of the first life.
KINDS: list[tuple[tuple[str | None, ...], dict[str, str]]] = [
    (("append.reserved",), {}),
    (("append.torn",), {}),
    (("append.written",), {}),
    (("archive.reserved",), {}),
    (("archive.torn",), {}),
    (("archive.trailed",), {}),
    (("archive.renamed",), {}),
    (("archive.linked",), {}),
    (("archive.copy_written",), {"redact": "email"}),
    (("archive.copied",), {"redact": "email"}),
    (("append.torn", "repair.aside"), {}),
    (("append.torn", "repair.cut"), {}),
    ((None,), {}),
]
TRIALS = soak(2 * len(KINDS), 16 * len(KINDS))  # 26 by default, 208 soaking


@dataclass
class Ledger:
    """What the clients were told: the chats that got a 2xx, per user, in order."""

    accepted: dict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: {u: [] for u in USERS}
    )
    lock: threading.Lock = field(default_factory=threading.Lock)
    torn: list[int] = field(default_factory=list)  # byte counts of torn writes that happened
    fired: Counter[str] = field(default_factory=Counter)
    random_kills: int = 0
    ops: int = 0


def _spec(point: str, rng: random.Random, single_user: bool) -> tuple[str, int | None]:
    if point.startswith("repair."):
        return point + "@1", None  # the start-up recovery is the first to repair
    # Repair trials tear the 3rd or 5th append of one user (a question): the whole entry
    # before the torn one is then an acknowledged reply, the one a bad repair would lose.
    nth = rng.choice([3, 5]) if point == "append.torn" and single_user else rng.randint(1, 3)
    if point.endswith(".torn"):
        torn = rng.randint(4, 30)
        return f"{point}@{nth}#{torn}", torn
    return f"{point}@{nth}", None


def _drive(
    server: Server, users: list[str], rng: random.Random, ledger: Ledger, tag: str, archives: bool
) -> None:
    """Chats, archives and disconnects from one thread per user until the server dies."""
    seeds = [rng.random() for _ in users]

    def one(user: str, seed: float) -> None:
        local = random.Random(seed)
        client = httpx.Client(base_url=server.url, headers=server.headers(user), timeout=20)
        try:
            for i in range(40):
                if server.proc is None or server.proc.poll() is not None:
                    return
                roll = local.random()
                with ledger.lock:
                    ledger.ops += 1
                try:
                    if archives and roll < 0.15:
                        client.post("/dialog/archive")
                        continue
                    if archives and roll < 0.25:
                        sse = SSEClient(server.url, mint(user))
                        wait_for(lambda: sse.seen or sse.closed.is_set(), 10, "ready")  # noqa: B023
                        sse.close()  # grace 0: archived (reason disconnect) in the background
                        continue
                    text = f"{user} {tag}.{i} {local.choice(TRICKY)}"
                    response = client.post("/chat", json={"message": text})
                except (httpx.HTTPError, OSError, AssertionError):
                    return  # the server died under us
                if response.status_code == 200:
                    with ledger.lock:
                        ledger.accepted[user].append((text, response.json()["reply"]["text"]))
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(u, s)) for u, s in zip(users, seeds, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a client thread hung"


def _life(
    make: Server, point: str | None, rng: random.Random, ledger: Ledger, tag: str, single: bool
) -> None:
    """One server life on the shared data directory, ended by SIGKILL."""
    torn = None
    if point is not None:
        spec, torn = _spec(point, rng, single)
        make.settings["fault_point"] = spec
    else:
        make.settings.pop("fault_point", None)
    server = make.spawn()
    assert server.proc is not None
    # A repair point fires during start-up recovery, before /health ever answers.
    wait_for(
        lambda: server.proc.poll() is not None or server._healthy(),  # type: ignore[union-attr]
        20,
        "the server to start or die",
    )
    killer = None
    if point is None:
        delay = rng.uniform(0.05, 0.6)
        killer = threading.Timer(delay, lambda: server.proc.send_signal(signal.SIGKILL))  # type: ignore[union-attr]
        killer.start()
    if server.proc.poll() is None:
        users = USERS[:1] if single else USERS
        _drive(server, users, rng, ledger, tag, archives=not single)
    if killer is not None:
        killer.join()
        ledger.random_kills += 1
    else:
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"fault {point} never fired:\n{server.log()[-3000:]}") from None
        crash_lines = server.log_lines("fault.crash")
        assert crash_lines and f"point={point}" in crash_lines[-1], server.log()[-3000:]
        ledger.fired[point] += 1
        if torn is not None:
            ledger.torn.append(torn)
    server.proc.wait(20)
    assert server.proc.returncode == -signal.SIGKILL


def test_sigkill_at_every_write_point_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = random.Random(20261121)
    ledger = Ledger()
    base = {"disconnect_grace": "0", "echo_delay": "0", "rate_limit": "0"}
    base |= {"session_timeout": "3600", "fsync": "no"}
    lives = 0
    for trial in range(TRIALS):
        points, extra = KINDS[trial % len(KINDS)]
        single = len(points) > 1  # repair trials: one user, so the torn write has a dialog
        for step, point in enumerate(points):
            settings = dict(base) | (extra if step == 0 else {})
            server = Server(
                data=data, log_path=tmp_path / f"life-{lives}.log", settings=dict(settings)
            )
            _life(server, point, rng, ledger, f"t{trial}s{step}", single)
            lives += 1
    # One last start: recovery settles whatever the last crash left; SIGTERM archives the rest.
    final = Server(data=data, log_path=tmp_path / "final.log", settings=dict(base)).start()
    health = httpx.get(final.url + "/health").json()
    assert health["status"] == "ok"
    final.stop()
    assert final.proc is not None and final.proc.returncode == 0

    users_dir = data / "users"
    tally = Tally()
    for user in USERS:
        check_exactly_once(users_dir, user, ledger.accepted[user], tally)
        assert not (users_dir / _dir(user) / "current.yaml").exists()
    assert stray_files(data) == []
    assert unloadable_archives(data) == []
    # Torn bytes are kept aside: one side file per torn write, and one more when recovery
    # itself was killed after copying them aside (or midway through cutting the journal).
    sides = sorted(users_dir.rglob("current.yaml.torn-*"))
    again = ledger.fired["repair.aside"] + ledger.fired["repair.cut"]
    assert len(sides) == len(ledger.torn) + again, [(p.name, p.stat().st_size) for p in sides]
    # Exactly the bytes the torn write put there (4: a repair cut short, see repair.cut).
    assert {p.stat().st_size for p in sides} <= set(ledger.torn) | {4}
    for side in sides:
        head = side.read_bytes()
        assert b"\0" not in head, "the zeros reserved past a torn write are not torn bytes"
        assert any(s.startswith(head[:6]) for s in (b"- seq: ", b"ended: ", b"user: ")), head
    print(
        f"\ncrash trials={TRIALS} lives={lives} fired={dict(ledger.fired)} "
        f"random_kills={ledger.random_kills} ops={ledger.ops} accepted={tally.accepted} "
        f"unacknowledged_on_disk={tally.unacknowledged} files={tally.files} "
        f"torn_side_files={len(sides)} reasons={dict(tally.reasons)}"
    )
    assert set(ledger.fired) == {p for points, _ in KINDS for p in points if p is not None}


def _dir(user: str) -> str:
    from archiver.layout import user_dir_name

    return user_dir_name(user)


def test_a_fault_point_must_be_known() -> None:
    from archiver.config import ConfigError, Settings

    for bad in ("append.nope", "append.torn@0", "append.torn#x", "archive.trailed@2@3"):
        try:
            Settings.from_env({"ARCHIVER_FAULT_POINT": bad})
        except ConfigError as exc:
            assert "ARCHIVER_FAULT_POINT" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")
    assert Settings.from_env({"ARCHIVER_FAULT_POINT": "append.torn@3#17"}).fault_point


def test_unarmed_points_cost_nothing_observable(tmp_path: Path) -> None:
    """Without ARCHIVER_FAULT_POINT nothing is armed and nothing says so."""
    server = Server(data=tmp_path / "data", log_path=tmp_path / "s.log").start()
    try:
        assert server.chat("z", "hello").status_code == 200
        assert "fault." not in server.log()
    finally:
        server.stop()


DAMAGED = {
    "seq not a number": b"user: d\ndialog: d-1\nstarted: 'x'\nmessages:\n- seq: x\n"
    b"  role: user\n...\n",
    "not yaml at all": b"garbage: [unclosed\n\x00\x01\x02 {{{\n...\n",
    "invalid utf-8": b"user: \xff\xfe\ndialog: d-2\nstarted: 'x'\nmessages:\n...\n",
    "no dialog id": b"user: d\nmessages:\n- seq: 1\n  role: user\n  at: 'x'\n  text: hi\n...\n",
    "only the marker": b"...\n",
    "a header, no message": b"user: d\ndialog: d-3\nstarted: 'x'\nmessages:\n...\n",
    "a huge seq": b"user: d\ndialog: d-4\nstarted: 'x'\nmessages:\n- seq: 99999999999999999999999\n"
    b"  role: user\n  at: 'x'\n  text: hi\n...\n",
    # An intact header, garbage where the entries were, the end marker kept: recovery
    # used to archive it as a 0-message archive that neither loader could read.
    "garbage entries": b"user: d\ndialog: d-5\nstarted: 'x'\nmessages:\n}{ :: [\x01\n  - x\n...\n",
}


READABLE = {"no dialog id", "a huge seq"}
TORN = {"only the marker"}


def test_damaged_journals_are_moved_aside_never_archived_and_the_user_goes_on(
    tmp_path: Path,
) -> None:
    """A journal no crash of ours can produce (edited by hand, a bad disk): the server
    starts, recovery never turns it into an archive, it is moved aside (never deleted),
    logged once and counted, and its user chats on in a fresh dialog at once."""
    from archiver.layout import user_dir_name

    data = tmp_path / "data"
    for n, content in enumerate(DAMAGED.values()):
        dialogs = data / "users" / user_dir_name(f"damaged{n}") / "dialogs"
        (dialogs / "archived").mkdir(parents=True)
        (dialogs / "current.yaml").write_bytes(content)
    server = Server(data=data, log_path=tmp_path / "damaged.log").start()
    try:
        assert unloadable_archives(data) == [], "start-up recovery archived a damaged journal"
        assert server.chat("healthy", "hello").status_code == 200
        for n, case in enumerate(DAMAGED):
            user = f"damaged{n}"
            for attempt in range(2):
                response = server.chat(user, f"hello {attempt}")
                assert response.status_code == 200, (case, response.text)
            dialog = httpx.get(server.url + "/dialog", headers=server.headers(user)).json()
            assert [m["text"] for m in dialog["messages"]][::2] == ["hello 0", "hello 1"], case
            aside = list(server.user_dir(user).glob("current.yaml.damaged-*"))
            if case in TORN:  # not ending in the marker: set aside as torn bytes, as ever
                aside = list(server.user_dir(user).glob("current.yaml.torn-*"))
            if case in READABLE:  # its message loads: recovery archived it, nothing is lost
                assert aside == [] and len(server.archives(user)) == 1, case
            else:
                assert [p.read_bytes() for p in aside] == [DAMAGED[case]], case
        moved = len(DAMAGED) - len(READABLE) - len(TORN)
        damaged = server.wait_log("journal.damaged", moved)
        assert len(damaged) == moved, damaged
        metrics = httpx.get(server.url + "/metrics").text
        assert f"archiver_journals_damaged_total {float(moved)}" in metrics
        assert stray_files(data) == [] and unloadable_archives(data) == []
        log = server.log()
        assert "Traceback" not in log and "request.failed" not in log
    finally:
        server.stop()
