"""The app in-process: its non-streaming routes through ``httpx.ASGITransport`` (streams
are tested against a real server: the transport buffers whole bodies, encode/httpx#2186),
and what importing it loads."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from archiver.app import create_app
from archiver.config import Settings
from tests.helpers import SECRET, mint

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET, fsync="no", echo_delay=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            yield http


def bearer(user: str, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(user, admin=admin)}"}


def test_importing_and_building_the_app_loads_no_cli_search_or_rendering() -> None:
    code = (
        "import sys, json\n"
        "from archiver.app import create_app\n"
        "from archiver.config import Settings\n"
        "create_app(Settings(jwt_secret='x' * 32))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('archiver'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "archiver.app" in loaded
    assert loaded.isdisjoint({"archiver.search", "archiver.render", "archiver.cli"}), loaded


async def test_an_archive_as_markdown_or_printable_html(client: httpx.AsyncClient) -> None:
    auth = bearer("alice")
    await client.post("/chat", json={"message": "<b>hi</b>"}, headers=auth)
    name = (await client.post("/dialog/archive", headers=auth)).json()["archive"]
    md = await client.get(f"/archives/{name}?format=md", headers=auth)
    assert md.headers["content-type"].startswith("text/markdown")
    assert "```text\n<b>hi</b>\n```" in md.text
    page = await client.get(f"/archives/{name}?format=html", headers=auth)
    assert page.headers["content-type"].startswith("text/html")
    assert "&lt;b&gt;hi&lt;/b&gt;" in page.text and "<b>hi" not in page.text
    bad = await client.get(f"/archives/{name}?format=pdf", headers=auth)
    assert bad.status_code == 400 and bad.json()["error"] == "bad_format"


async def test_chat_then_read_the_dialog_archive_it_and_list_it(client: httpx.AsyncClient) -> None:
    auth = bearer("alice")
    sent = await client.post("/chat", json={"message": "hello"}, headers=auth)
    assert sent.status_code == 200, sent.text
    body = sent.json()
    assert body["seq"] == 1 and body["reply"]["seq"] == 2
    current = (await client.get("/dialog", headers=auth)).json()
    assert [m["role"] for m in current["messages"]] == ["user", "assistant"]
    archived = (await client.post("/dialog/archive", headers=auth)).json()
    assert archived["dialog"] == body["dialog"] and archived["messages"] == 2
    listed = (await client.get("/archives", headers=auth)).json()
    assert [a["name"] for a in listed] == [archived["archive"]]
    assert listed[0]["reason"] == "user"
    raw = await client.get(f"/archives/{archived['archive']}", headers=auth)
    assert raw.headers["content-type"].startswith("application/yaml")
    assert raw.content.startswith(b"user: alice\n") and raw.content.endswith(b"\n...\n")
    parsed = await client.get(
        f"/archives/{archived['archive']}", headers={**auth, "Accept": "application/json"}
    )
    assert parsed.json()["reason"] == "user" and len(parsed.json()["messages"]) == 2


async def test_empty_state_answers(client: httpx.AsyncClient) -> None:
    auth = bearer("nobody")
    assert (await client.get("/dialog", headers=auth)).json()["messages"] == []
    assert (await client.get("/archives", headers=auth)).json() == []
    nothing = (await client.post("/dialog/archive", headers=auth)).json()
    assert nothing == {"dialog": None, "archive": None, "messages": 0}
    assert (await client.post("/chat/stop", headers=auth)).json() == {"stopped": False}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/dialog", {}, 401, None),
        ("GET", "/nowhere", {"auth": True}, 404, "not_found"),
        ("GET", "/archives/not-an-archive", {"auth": True}, 404, "not_found"),
        ("POST", "/chat", {"auth": True, "content": b"hi"}, 415, "unsupported_media_type"),
        ("POST", "/chat", {"auth": True, "json": {"message": " "}}, 400, "empty_message"),
        ("POST", "/chat", {"auth": True, "json": {"text": "x"}}, 400, "bad_request"),
        ("GET", "/users", {"auth": True}, 403, "forbidden"),
    ],
)
async def test_errors_are_json_with_a_code_and_a_sentence(
    client: httpx.AsyncClient, method: str, path: str, kwargs: dict, status: int, code: str | None
) -> None:  # type: ignore[type-arg]
    headers = bearer("alice") if kwargs.pop("auth", False) else {}
    if "content" in kwargs:
        headers["Content-Type"] = "text/plain"
    response = await client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    if code is not None:
        assert body["error"] == code


async def test_admin_routes_health_and_metrics(client: httpx.AsyncClient) -> None:
    await client.post("/chat", json={"message": "hi"}, headers=bearer("bob"))
    admin = bearer("root", admin=True)
    users = (await client.get("/users", headers=admin)).json()
    assert users == [{"user": "bob", "archives": 0, "current": True}]
    assert (await client.get("/users/bob/archives", headers=admin)).json() == []
    health = (await client.get("/health", headers=admin)).json()
    assert health["status"] == "ok" and "tasks" in health and health["archived"] == {}
    metrics = await client.get("/metrics")
    assert b'archiver_messages_appended_total{role="user"} 1.0' in metrics.content
