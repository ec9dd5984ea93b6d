"""Instance liveness through the kernel's flock, with real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from archiver.owners import Instance


def test_an_instance_is_alive_while_it_runs_and_not_after(tmp_path: Path) -> None:
    me = Instance(tmp_path)
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom archiver.owners import Instance\n"
            f"i = Instance({str(tmp_path)!r}); print(i.id, flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        other_id = other.stdout.readline().strip()
        assert me.alive(me.id) and me.alive(other_id)
        assert me.other_live_owner(other_id) and not me.other_live_owner(me.id)
    finally:
        other.kill()
        other.wait()
    assert not me.alive(other_id), "a killed instance's lock is released by the kernel"
    assert not me.other_live_owner(None) and not me.alive("../x") and not me.alive("")
    me.close()
    assert not me.path.exists()


def test_alone_until_another_instance_shares_the_data_directory(tmp_path: Path) -> None:
    me = Instance(tmp_path)
    assert me.alone()
    other = Instance(tmp_path)
    assert not me.alone() and not other.alone()
    other.close()
    assert me.alone()
    me.close()
