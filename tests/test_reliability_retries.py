"""Retries of POST /chat with an Idempotency-Key: journaled once, whatever happened between.

A client that lost the answer sends the same chat again with the same key. Each test
checks the files afterwards: the message is in exactly one file, once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from archiver.dialogfile import parse_dialog
from tests.helpers import Server, mint, wait_for

Make = Callable[..., Server]


def keyed(server: Server, user: str, text: str, key: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        server.url + "/chat",
        json={"message": text},
        headers={"Authorization": f"Bearer {mint(user)}", "Idempotency-Key": key},
        timeout=timeout,
    )


def copies(server: Server, user: str, text: str) -> int:
    """How many user entries with ``text`` the user's files hold (journal and archives)."""
    files = [*server.archives(user), server.user_dir(user) / "current.yaml"]
    return sum(
        sum(1 for m in parse_dialog(f.read_bytes()).messages if m.role == "user" and m.text == text)
        for f in files
        if f.exists()
    )


def test_a_repeat_returns_the_first_result_and_journals_nothing(make_server: Make) -> None:
    server = make_server()
    first = keyed(server, "u1", "hello there", "k-1")
    assert first.status_code == 200, first.text
    for _ in range(3):
        again = keyed(server, "u1", "hello there", "k-1")
        assert (again.status_code, again.json()) == (200, first.json())
    assert copies(server, "u1", "hello there") == 1
    assert keyed(server, "u2", "hello there", "k-1").status_code == 200, "keys are per user"
    server.wait_log("chat.repeated", 3)


def test_the_same_key_with_another_message_is_422(make_server: Make) -> None:
    server = make_server()
    assert keyed(server, "u1", "one", "k").status_code == 200
    reused = keyed(server, "u1", "two", "k")
    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused"
    assert copies(server, "u1", "two") == 0


def test_a_bad_key_is_400_and_writes_nothing(make_server: Make) -> None:
    server = make_server()
    refused = keyed(server, "u1", "one", "k" * 256)
    assert (refused.status_code, refused.json()["error"]) == (400, "bad_idempotency_key")
    assert not server.user_dir("u1").exists()


def test_repeats_while_the_first_still_runs_wait_for_it(make_server: Make) -> None:
    server = make_server(echo_delay="0.1")  # a reply of a few words takes a second
    text = "one two three four five six seven eight"
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(keyed(server, "u1", text, "same"))

    threads = [threading.Thread(target=send) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert len({a.text for a in answers}) == 1, "every repeat got the first one's answer"
    assert copies(server, "u1", text) == 1


def test_a_repeat_after_a_crash_and_restart_is_answered_from_the_archive(
    make_server: Make, tmp_path: Path
) -> None:
    server = make_server()
    first = keyed(server, "u1", "before the crash", "k-crash")
    assert first.status_code == 200
    server.signal(signal.SIGKILL)
    server.wait()
    again_server = make_server()  # start-up recovery archives the dead process's dialog
    again = keyed(again_server, "u1", "before the crash", "k-crash")
    assert again.status_code == 200, again.text
    body = again.json()
    assert body.pop("archive") == again_server.archives("u1")[-1].name
    assert body == first.json()
    assert copies(again_server, "u1", "before the crash") == 1


def test_a_repeat_after_the_dialog_was_archived_is_not_journaled_again(make_server: Make) -> None:
    server = make_server()
    first = keyed(server, "u1", "archive me", "k-arch")
    archived = httpx.post(
        server.url + "/dialog/archive", headers=server.headers("u1"), timeout=10
    ).json()
    again = keyed(server, "u1", "archive me", "k-arch")
    assert again.status_code == 200
    assert again.json() == {**first.json(), "archive": archived["archive"]}
    assert not (server.user_dir("u1") / "current.yaml").exists()
    assert copies(server, "u1", "archive me") == 1


def test_another_instance_on_the_same_data_sees_the_key(make_server: Make, tmp_path: Path) -> None:
    one = make_server()
    two = make_server(data=tmp_path / "data")
    first = keyed(one, "u1", "shared", "k-shared")
    again = keyed(two, "u1", "shared", "k-shared")
    assert (again.status_code, again.json()) == (200, first.json())
    assert copies(one, "u1", "shared") == 1


def test_a_repeat_of_a_message_whose_reply_a_crash_cut_is_409(make_server: Make) -> None:
    server = make_server(echo_delay="0.5")
    text = "a long question " * 10
    sent = threading.Thread(target=lambda: _ignore_errors(server, text))
    sent.start()
    journal = server.user_dir("u1") / "current.yaml"
    wait_for(lambda: journal.exists() and b"k-cut" in journal.read_bytes(), 10, "the question")
    server.signal(signal.SIGKILL)
    server.wait()
    sent.join(30)
    restarted = make_server()
    again = keyed(restarted, "u1", text, "k-cut")
    assert again.status_code == 409, again.text
    assert again.json()["error"] == "idempotency_key_unanswered"
    assert copies(restarted, "u1", text) == 1


def _ignore_errors(server: Server, text: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # killed mid-reply: that is the point
        keyed(server, "u1", text, "k-cut")
