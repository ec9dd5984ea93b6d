"""Operations against a live server: /metrics, the admin feed, retention, redaction."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from archiver.journal import Journal
from archiver.layout import ARCHIVED
from tests.helpers import Server, SSEClient, mint, wait_for

Make = Callable[..., Server]


def samples(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(server.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_what_happened(make_server: Make) -> None:
    server = make_server(disconnect_grace="0", echo_delay="0", rate_limit="1")
    with SSEClient(server.url, mint("m1")) as sse:
        sse.next("ready")
        assert server.chat("m1", "hello").status_code == 200
        assert server.chat("m1", "too fast").status_code == 429
        before = samples(server)
        assert before[("archiver_connections", ())] == 1
        assert before[("archiver_active_users", ())] == 1
    wait_for(lambda: server.archives("m1"), what="the archive")
    after = samples(server)
    assert after[("archiver_connections", ())] == 0
    assert after[("archiver_messages_appended_total", (("role", "user"),))] == 1
    assert after[("archiver_messages_appended_total", (("role", "assistant"),))] == 1
    assert after[("archiver_dialogs_archived_total", (("reason", "disconnect"),))] == 1
    assert after[("archiver_archive_seconds_count", ())] == 1
    assert after[("archiver_chats_refused_total", (("code", "rate_limited"),))] == 1
    assert after[("archiver_reply_seconds_count", ())] == 1


@pytest.mark.parametrize("relative_data", [False, True], ids=["absolute", "relative"])
def test_admin_feed_sees_archives_from_this_and_other_processes(
    make_server: Make, relative_data: bool
) -> None:
    server = make_server(disconnect_grace="0", relative_data=relative_data)
    refused = httpx.get(server.url + "/admin/feed", headers=server.headers("not-admin"))
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    feed = SSEClient(server.url, mint("ops", admin=True), path="/admin/feed")
    assert feed.next("ready").data["watching"] is True
    # An archive this server writes...
    server.chat("f1", "from the server")
    httpx.post(server.url + "/dialog/archive", headers=server.headers("f1"))
    event = feed.next("archive").data
    assert (event["user"], event["reason"], event["messages"]) == ("f1", "user", 2)
    # ...and one another process writes on the same data directory.
    other = Journal(server.data, fsync="no")
    other.append("auth0|42", "user", "from elsewhere")
    archived = other.archive("auth0|42", "timeout")
    assert archived is not None
    event = feed.next("archive").data
    assert event == {"user": "auth0|42", **{k: event[k] for k in event if k != "user"}}
    assert (event["name"], event["reason"]) == (archived.name, "timeout")
    feed.close()
    wait_for(lambda: server.log_lines("feed.stop"), what="the watcher to stop")


def test_retention_prunes_old_archives_in_the_sweeper(make_server: Make, tmp_path: Path) -> None:
    data = tmp_path / "data"
    journal = Journal(data, fsync="no")
    journal.append("old", "user", "ancient history")
    archived = journal.archive("old", "timeout")
    assert archived is not None
    # Make it look two days old: its name and its `ended` say when it was archived.
    text = archived.path.read_text()
    ended = yaml.safe_load(text)["ended"]
    two_days_ago = time.gmtime(time.time() - 2 * 86400)
    old_name = time.strftime("%Y-%m-%d-%H-%M-%S", two_days_ago) + ".yaml"
    old_ended = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", two_days_ago)
    (archived.path.parent / old_name).write_text(text.replace(ended, old_ended))
    os.unlink(archived.path)
    journal.append("new", "user", "fresh")
    recent = journal.archive("new", "timeout")
    assert recent is not None
    server = make_server(data=data, retention_days="1", sweep_interval="0.2")
    wait_for(lambda: server.log_lines("archive.pruned"), what="the prune")
    assert not (journal.layout.dialogs_dir("old") / ARCHIVED / old_name).exists()
    assert recent.path.exists()
    line = server.log_lines("archive.pruned")[0]
    assert "user=old" in line and f"name={old_name}" in line


def test_redaction_applies_to_archives_only(make_server: Make) -> None:
    server = make_server(redact="email,card,phone", disconnect_grace="0", echo_delay="0")
    with SSEClient(server.url, mint("r1")) as sse:
        sse.next("ready")
        server.chat("r1", "reach me at r1@example.org")
        live = httpx.get(server.url + "/dialog", headers=server.headers("r1")).json()
        assert live["messages"][0]["text"] == "reach me at r1@example.org"
    [archive] = wait_for(lambda: server.archives("r1"), what="the archive")
    doc = yaml.safe_load(archive.read_text())
    assert [m["text"] for m in doc["messages"]] == [
        "reach me at [redacted:email]",
        "Echo: reach me at [redacted:email]",
    ]
    assert doc["redacted"] == "email=2, card=0, phone=0"
    assert "r1@example.org" not in archive.read_text()


def test_bad_redaction_config_stops_the_start_with_a_sentence(make_server: Make) -> None:
    server = make_server(start=False, redact="ssn")
    assert server.proc is None
    import subprocess
    import sys

    from tests.helpers import SECRET, base_env

    result = subprocess.run(
        [sys.executable, "-m", "archiver", "serve", "--data", str(server.data)],
        env=base_env(server.data.parent, jwt_secret=SECRET, redact="ssn"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "unknown pattern 'ssn'" in result.stderr
