"""Admission: caps per address and per process, a rate per address, episodes logged once."""

from __future__ import annotations

import logging

import pytest

from archiver.admission import Admission


def events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, object]]]:
    return [
        (r.getMessage(), r.archiver_fields)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage().startswith("limit.")
    ]


def test_streams_per_address_are_capped_and_freed() -> None:
    admission = Admission(max_streams_per_ip=2)
    for _ in range(2):
        assert admission.admit_stream("10.0.0.1", 0) is None
        admission.opened("10.0.0.1")
    refused = admission.admit_stream("10.0.0.1", 0)
    assert refused is not None and (refused.status, refused.code) == (429, "too_many_streams")
    assert refused.headers == {"Retry-After": "5"} and refused.detail.endswith(".")
    assert admission.admit_stream("10.0.0.2", 0) is None, "another address is not affected"
    admission.closed("10.0.0.1")
    assert admission.admit_stream("10.0.0.1", 0) is None
    admission.closed("10.0.0.1")
    assert admission.streams_of("10.0.0.1") == 0 and admission.streams == 0


def test_the_process_cap_refuses_with_503_for_everyone() -> None:
    admission = Admission(max_connections=3)
    for i in range(3):
        admission.opened(f"10.0.0.{i}")
    refused = admission.admit_stream("10.9.9.9", 0)
    assert refused is not None and (refused.status, refused.code) == (503, "too_many_connections")
    assert admission.admit_chat("10.9.9.9", 0) is None, "chats go on while streams are full"
    admission.closed("10.0.0.0")
    assert admission.admit_stream("10.9.9.9", 0) is None


def test_the_rate_per_address_covers_chats_and_new_streams() -> None:
    admission = Admission(rate_per_ip=60)  # one a second, a minute's worth of burst
    for _ in range(30):
        assert admission.admit_chat("10.0.0.1", 0) is None
        assert admission.admit_stream("10.0.0.1", 0) is None
    refused = admission.admit_chat("10.0.0.1", 0)
    assert refused is not None and (refused.status, refused.code) == (429, "rate_limited_address")
    assert refused.retry_after == pytest.approx(1.0)
    assert admission.admit_chat("10.0.0.1", 1.0) is None, "one more a second"
    assert admission.admit_chat("10.0.0.2", 0) is None


def test_zero_turns_every_limit_off() -> None:
    admission = Admission()
    for _ in range(5000):
        assert admission.admit_stream("10.0.0.1", 0) is None
        admission.opened("10.0.0.1")
        assert admission.admit_chat("10.0.0.1", 0) is None


def test_an_episode_is_logged_when_it_starts_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admission = Admission(max_streams_per_ip=1)
    admission.opened("10.0.0.1")
    with caplog.at_level(logging.INFO, logger="archiver"):
        for second in range(50):
            assert admission.admit_stream("10.0.0.1", second) is not None
        admission.closed("10.0.0.1")
        assert admission.admit_stream("10.0.0.1", 60) is None
        assert admission.admit_stream("10.0.0.1", 61) is None  # no second "recovered"
    assert events(caplog) == [
        ("limit.exceeded", {"kind": "too_many_streams", "client": "10.0.0.1", "status": 429}),
        (
            "limit.recovered",
            {"kind": "too_many_streams", "client": "10.0.0.1", "refused": 50, "seconds": 60.0},
        ),
    ]


def test_the_process_wide_episode_ends_when_a_stream_fits_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admission = Admission(max_connections=1)
    admission.opened("a")
    with caplog.at_level(logging.INFO, logger="archiver"):
        assert admission.admit_stream("b", 0) is not None
        assert admission.admit_stream("c", 1) is not None
        assert admission.admit_chat("d", 2) is None  # full still: the episode goes on
        admission.closed("a")
        assert admission.admit_stream("b", 3) is None
    assert [(name, fields["client"]) for name, fields in events(caplog)] == [
        ("limit.exceeded", "*"),
        ("limit.recovered", "*"),
    ]
    assert events(caplog)[1][1]["refused"] == 2


def test_refuse_early_answers_as_admit_would_and_takes_nothing_from_the_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="archiver")
    admission = Admission(max_streams_per_ip=1, rate_per_ip=2)
    assert admission.refuse_early("10.0.0.1", 0, stream=True) is None
    assert admission.refuse_early("10.0.0.1", 0, stream=True) is None, "a look takes nothing"
    assert admission.admit_stream("10.0.0.1", 0) is None
    admission.opened("10.0.0.1")
    capped = admission.refuse_early("10.0.0.1", 0, stream=True)
    assert capped is not None and capped.code == "too_many_streams"
    assert admission.refuse_early("10.0.0.1", 0, stream=False) is None, "chats have no cap"
    assert admission.admit_chat("10.0.0.1", 0) is None  # the bucket's second token
    rated = admission.refuse_early("10.0.0.1", 0, stream=False)
    assert rated is not None and rated.code == "rate_limited_address"
    assert rated.retry_after == 30.0
    # Refused early or by the route: one episode, as before.
    assert admission.admit_chat("10.0.0.1", 0) is not None
    exceeded = [name for name, _ in events(caplog) if name == "limit.exceeded"]
    assert exceeded == ["limit.exceeded"] * 2, "one per kind: streams, then the rate"
    assert admission.refuse_early("10.0.0.2", 0, stream=True) is None, "another address"
