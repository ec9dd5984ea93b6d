"""The reply producers against real HTTP servers on loopback (tests/upstreams.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import jwt
import pytest
from openai import APIError, AsyncOpenAI
from openai.types.chat import ChatCompletionChunk
from pydantic import ValidationError

from archiver.config import Settings
from archiver.dialogfile import Message
from archiver.replies import Echo, ReplyError, ReplyRequest, make_client, make_responder, words
from tests.upstreams import Upstream, validate_request_body


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
        ("blocks", "Hello from the model."),
        ("json", "n8n says: second question"),
        ("text", "line one\nline two"),
    ],
)
async def test_n8n_response_shapes(upstream: Upstream, path: str, expected: str) -> None:
    assert await collect(n8n(upstream, path)) == expected


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "kind"), [("unclosed", "cut"), ("empty", "garbage")])
async def test_an_n8n_answer_that_is_not_whole_fails(
    upstream: Upstream, path: str, kind: str
) -> None:
    with pytest.raises(ReplyError) as info:
        await collect(n8n(upstream, path))
    assert info.value.kind == kind and info.value.detail.endswith(".")


@pytest.mark.anyio
async def test_an_n8n_error_chunk_without_content_names_the_failing_node(
    upstream: Upstream,
) -> None:
    with pytest.raises(ReplyError) as info:
        await collect(n8n(upstream, "node-error"))
    assert info.value.kind == "reported"
    assert info.value.detail == "The n8n workflow failed at its step 'Check order'."


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


# ---------------------------------------------------------------------------------------
# The fake OpenAI server against the official SDK: it must read the fake's streams as
# archiver does, and accept archiver's requests.


def sdk(upstream: Upstream, path: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{upstream.url}/{path}", api_key="sk-fake", max_retries=0)


async def sdk_text(upstream: Upstream, path: str, **options: Any) -> tuple[str, list[Any]]:
    """The reply text as the official client reads it, and every chunk it parsed."""
    chunks = []
    async with sdk(upstream, path) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, **options
        )
        async for parsed in stream:
            chunks.append(parsed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["openai", "openai-usage"])
async def test_the_sdk_reads_the_fake_stream_as_archiver_does(
    upstream: Upstream, path: str
) -> None:
    archived = await collect(openai(upstream, path))
    read, chunks = await sdk_text(upstream, path)
    assert read == archived == "Hello from the model."
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    first = chunks[0].choices[0].delta
    assert (first.role, first.content) == ("assistant", None), "the first chunk has only a role"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes == [None] * 6 + ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == (1 if path == "openai-usage" else 0)


@pytest.mark.anyio
async def test_the_fake_sends_usage_when_the_sdk_asks(upstream: Upstream) -> None:
    read, chunks = await sdk_text(upstream, "openai", stream_options={"include_usage": True})
    assert read == "Hello from the model."
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    sent = upstream.requests[-1]["body"]
    assert validate_request_body(sent)["stream_options"] == {"include_usage": True}


@pytest.mark.anyio
async def test_an_error_mid_stream_fails_both_after_the_same_partial_text(
    upstream: Upstream,
) -> None:
    seen: list[str] = []
    async with sdk(upstream, "openai-error") as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(APIError, match="model overloaded"):
            async for parsed in stream:
                seen.append(parsed.choices[0].delta.content or "")
    settings = openai(upstream, "openai-error")
    got: list[str] = []
    async with make_client(settings) as client:
        with pytest.raises(ReplyError) as info:
            async for piece in make_responder(settings, client).reply(REQUEST):
                got.append(piece)
    assert "".join(seen) == "".join(got) == "Partial"
    assert info.value.kind == "reported" and "model overloaded" in info.value.detail


@pytest.mark.anyio
@pytest.mark.parametrize("prompt", ["", "Be brief."])
async def test_archivers_request_is_valid_for_the_sdks_request_types(
    upstream: Upstream, prompt: str
) -> None:
    await collect(openai(upstream, system_prompt=prompt))
    params = validate_request_body(upstream.requests[-1]["body"])
    assert params["stream"] is True
    roles = [m["role"] for m in params["messages"]]
    assert roles == (["system"] if prompt else []) + ["user", "assistant", "user"]


def test_the_request_check_is_strict() -> None:
    good = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    assert validate_request_body(good)["model"] == "m"
    bad = [
        {**good, "stream": "true"},
        {**good, "stream": False},
        {**good, "temperature_": 1},
        {**good, "messages": [{"role": "error", "content": "x"}]},
        {**good, "messages": [{"role": "user", "content": 5}]},
        {**good, "messages": [{"role": "user", "content": "x", "seq": 1}]},
    ]
    for body in bad:
        with pytest.raises(ValidationError):
            validate_request_body(body)
