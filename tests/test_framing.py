"""FramingWatch: one log line per origin that frames the widget without being allowed."""

from __future__ import annotations

import logging

import pytest

from archiver.framing import MAX_ORIGINS, FramingWatch, framing_origin


def scope(dest: str = "iframe", site: str = "cross-site", referer: str | None = None) -> dict:  # type: ignore[type-arg]
    headers = [(b"sec-fetch-dest", dest.encode()), (b"sec-fetch-site", site.encode())]
    if referer is not None:
        headers.append((b"referer", referer.encode()))
    return {"type": "http", "path": "/widget/chat.html", "headers": headers}


def test_only_a_foreign_frame_has_a_framing_origin() -> None:
    assert framing_origin(scope(referer="https://shop.example/cart?id=1")) == "https://shop.example"
    assert framing_origin(scope(site="same-site", referer="http://a:81/")) == "http://a:81"
    assert framing_origin(scope()) == "unknown"
    assert framing_origin(scope(site="same-origin", referer="https://x/")) is None
    assert framing_origin(scope(dest="document", referer="https://x/")) is None
    assert framing_origin({"type": "http", "headers": []}) is None


def test_each_refused_origin_is_logged_once_and_allowed_ones_never(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = FramingWatch(("https://allowed.example/",))
    with caplog.at_level(logging.INFO, logger="archiver"):
        for _ in range(3):
            watch.check(scope(referer="https://shop.example/a"))
            watch.check(scope(referer="https://allowed.example/page"))
        watch.check(scope(referer="https://other.example/"))
    lines = [r for r in caplog.records if r.getMessage() == "widget.framing_refused"]
    origins = [r.archiver_fields["origin"] for r in lines]  # type: ignore[attr-defined]
    assert origins == ["https://shop.example", "https://other.example"]


def test_the_set_of_remembered_origins_is_bounded() -> None:
    watch = FramingWatch(())
    for i in range(MAX_ORIGINS + 50):
        watch.check(scope(referer=f"https://site{i}.example/"))
    assert len(watch.seen) == MAX_ORIGINS
