"""The reply producers against real HTTP servers on loopback (tests/upstreams.py)."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import jwt
import pytest

from archiver.config import Settings
from archiver.dialogfile import Message
from archiver.replies import Echo, ReplyError, ReplyRequest, make_client, make_responder, words
from tests.upstreams import Upstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


HISTORY = [
    Message(1, "user", "t1", "first question"),
    Message(2, "assistant", "t2", "first answer"),
    Message(3, "error", "t3", "The model server could not be reached."),
    Message(4, "user", "t4", "second question"),
]
REQUEST = ReplyRequest(user="alice", dialog="d-1", message="second question", history=HISTORY)


async def collect(settings: Settings) -> str:
    async with make_client(settings) as client:
        responder = make_responder(settings, client)
        return "".join([chunk async for chunk in responder.reply(REQUEST)])


def openai(upstream: Upstream, path: str = "openai", **kw: object) -> Settings:
    return Settings(
        upstream="openai", upstream_url=f"{upstream.url}/{path}", upstream_model="m", **kw
    )  # type: ignore[arg-type]


def n8n(upstream: Upstream, path: str, **kw: object) -> Settings:
    return Settings(upstream="n8n", upstream_url=f"{upstream.url}/n8n/{path}", **kw)  # type: ignore[arg-type]


def test_words_concatenate_back_exactly() -> None:
    for text in ("", "a", "  two  words \n", "Echo: x\ny"):
        assert "".join(words(text)) == text


@pytest.mark.anyio
async def test_echo_streams_word_by_word() -> None:
    chunks = [c async for c in Echo(0).reply(REQUEST)]
    assert len(chunks) == 3 and "".join(chunks) == "Echo: second question"


@pytest.mark.anyio
async def test_openai_stream_with_system_prompt_key_and_history(upstream: Upstream) -> None:
    settings = openai(upstream, system_prompt="Be brief.", upstream_api_key="sk-test")
    assert await collect(settings) == "Hello from the model."
    sent = upstream.requests[-1]
    assert sent["headers"]["authorization"] == "Bearer sk-test"
    assert sent["body"]["stream"] is True and sent["body"]["model"] == "m"
    assert sent["body"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "kind", "status"),
    [
        ("fail", "http_status", 502),
        ("cut", "cut", 502),
        ("garbage", "garbage", 502),
        ("openai-error", "reported", 502),
        ("hang", "timeout", 504),
    ],
)
async def test_openai_failures_become_reply_errors(
    upstream: Upstream, path: str, kind: str, status: int
) -> None:
    with pytest.raises(ReplyError) as info:
        await collect(openai(upstream, path, upstream_timeout=0.5))
    assert (info.value.kind, info.value.status) == (kind, status)
    assert info.value.detail.endswith(".")


@pytest.mark.anyio
async def test_connection_refused(upstream: Upstream) -> None:
    settings = Settings(upstream="openai", upstream_url="http://127.0.0.1:9", upstream_model="m")
    with pytest.raises(ReplyError) as info:
        await collect(settings)
    assert info.value.kind == "connect"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("stream", "Hello from the model."),
        ("sse", "Hello from the model."),
        ("json", "n8n says: second question"),
        ("text", "line one\nline two"),
    ],
)
async def test_n8n_response_shapes(upstream: Upstream, path: str, expected: str) -> None:
    assert await collect(n8n(upstream, path)) == expected


@pytest.mark.anyio
async def test_n8n_receives_message_dialog_user_history_and_its_own_token(
    upstream: Upstream,
) -> None:
    await collect(n8n(upstream, "json", upstream_jwt_secret="n8n-secret-" + "y" * 32))
    body = upstream.requests[-1]["body"]
    assert body["message"] == "second question" and body["dialog"] == "d-1"
    assert body["user"] == "alice"
    assert body["history"][-1] == {"role": "user", "content": "second question"}
    claims = jwt.decode(body["jwt_token"], "n8n-secret-" + "y" * 32, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] <= 60


@pytest.mark.anyio
async def test_closing_the_reply_closes_the_upstream_request(upstream: Upstream) -> None:
    settings = openai(upstream, "slow")
    async with make_client(settings) as client:
        stream = make_responder(settings, client).reply(REQUEST)
        assert (await stream.__anext__()).startswith("w0")
        await stream.aclose()
    await anyio.to_thread.run_sync(upstream.wait_closed, "/slow/chat/completions")
