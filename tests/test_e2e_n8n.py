"""A live `archiver serve` with ARCHIVER_UPSTREAM=n8n talking to a real n8n.

n8n (the version pinned in tests/n8n/VERSION, installed by tests/n8n/install.sh) runs on a
free loopback port with its own user folder (SQLite) and nothing that calls out. The
workflows committed in tests/n8n/*.json are imported with n8n's CLI and activated; their
AI Agent nodes talk to the OpenAI-compatible fake in tests/upstreams.py through n8n's
own OpenAI credentials, so every byte archiver reads was framed by n8n itself.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import Server, SSEClient, free_port, mint, unavailable, wait_for
from tests.upstreams import Upstream, validate_request_body

HERE = Path(__file__).parent / "n8n"
INSTALL = HERE / "install.sh"
INSTALL_COMMAND = "bash tests/n8n/install.sh"
WORKFLOW_SECRET = "n8n-tier-secret-" + "s" * 32  # ARCHIVER_UPSTREAM_JWT_SECRET
ENCRYPTION_KEY = "n8n-tier-encryption-key-" + "k" * 16
# Read at import: conftest's autouse fixture clears ARCHIVER_* before each test.
NPM_CACHE = os.environ.get("ARCHIVER_NPM_CACHE")
START_TIMEOUT = 240  # n8n loads ~500 node types at start; slow on a busy 2-core machine
CLI_TIMEOUT = 300
Make = Callable[..., Server]

# The committed workflows, tests/n8n/<webhook path>.json.
WORKFLOWS = (
    "archiver-stream",  # streaming: checks the token and history; an agent streams the echo
    "archiver-slow",  # streaming, a token every 200 ms (killed mid-reply)
    "archiver-fail",  # streaming, then a Code node throws
    "archiver-stream-nothing",  # streaming, but no node streams: an empty answer
    "archiver-last-node",  # "When Last Node Finishes": {"output": ...}
    "archiver-respond-json",  # Respond to Webhook with JSON {"text": ...}
    "archiver-respond-text",  # Respond to Webhook with text (text/html), two lines
)


def n8n_binary() -> str | None:
    """The installed n8n, asked of install.sh (where it lives is decided there only)."""
    env = {**os.environ, **({"ARCHIVER_NPM_CACHE": NPM_CACHE} if NPM_CACHE else {})}
    found = subprocess.run(
        ["bash", str(INSTALL), "--check"], capture_output=True, text=True, env=env, check=False
    )
    return found.stdout.strip() if found.returncode == 0 else None


def credentials(model_url: str) -> list[dict[str, Any]]:
    """The OpenAI credentials the workflows' model nodes use, whose base URL is the fake
    (the node's own base-URL option is hidden from version 1.1 on). import:credentials
    encrypts them with the instance's key."""
    return [
        {
            "id": f"archiverFake{name.title()}",
            "name": f"fake OpenAI ({name})",
            "type": "openAiApi",
            "data": {"apiKey": "sk-n8n-tier", "url": f"{model_url}/{name}"},
        }
        for name in ("echo", "slow")
    ]


@dataclass
class N8n:
    """One n8n process (``n8n start``) with its own user folder."""

    binary: str
    home: Path
    model_url: str  # the OpenAI-compatible fake
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "n8n.log"

    def env(self) -> dict[str, str]:
        """Everything n8n is told: its own folder, SQLite, loopback, nothing calling out."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "N8N_USER_FOLDER": str(self.home),
            "N8N_ENCRYPTION_KEY": ENCRYPTION_KEY,
            "DB_TYPE": "sqlite",
            "N8N_PORT": str(self.port),
            "N8N_LISTEN_ADDRESS": "127.0.0.1",
            "N8N_HOST": "127.0.0.1",
            "N8N_PROTOCOL": "http",
            "WEBHOOK_URL": self.url + "/",
            # No telemetry, no update checks, no templates, banners or surveys from the web.
            "N8N_DIAGNOSTICS_ENABLED": "false",
            "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
            "N8N_VERSION_NOTIFICATIONS_WHATS_NEW_ENABLED": "false",
            "N8N_TEMPLATES_ENABLED": "false",
            "N8N_PERSONALIZATION_ENABLED": "false",
            "N8N_HIRING_BANNER_ENABLED": "false",
            "N8N_DYNAMIC_BANNERS_ENABLED": "false",
            "N8N_AI_ENABLED": "false",
            "N8N_COMMUNITY_PACKAGES_ENABLED": "false",
            "N8N_LICENSE_AUTO_RENEW_ENABLED": "false",
            "EXTERNAL_FRONTEND_HOOKS_URLS": "",
            "N8N_DIAGNOSTICS_CONFIG_FRONTEND": "",
            "N8N_DIAGNOSTICS_CONFIG_BACKEND": "",
            # Webhooks need no login; the public API and the editor's user setup stay off.
            "N8N_PUBLIC_API_DISABLED": "true",
            "N8N_SECURE_COOKIE": "false",
            # The Code node that checks archiver's token needs crypto and the secret.
            "NODE_FUNCTION_ALLOW_BUILTIN": "crypto",
            "N8N_BLOCK_ENV_ACCESS_IN_NODE": "false",
            "WORKFLOW_JWT_SECRET": WORKFLOW_SECRET,
            # Run Code nodes in-process: a task-runner process is one more heavy child.
            "N8N_RUNNERS_ENABLED": "false",
            "N8N_LOG_LEVEL": "info",
            "N8N_LOG_OUTPUT": "console",
            "EXECUTIONS_MODE": "regular",
            "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "false",
            "N8N_GIT_NODE_DISABLE_BARE_REPOS": "true",
        }

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [self.binary, *args],
            env=self.env(),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, f"n8n {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def setup(self) -> None:
        """Import the credential and the committed workflows, and activate them."""
        creds = self.home / "credentials.json"
        creds.write_text(json.dumps(credentials(self.model_url)))
        self.cli("import:credentials", f"--input={creds}")
        folder = self.home / "workflows"
        folder.mkdir()
        for name in WORKFLOWS:
            (folder / f"{name}.json").write_text((HERE / f"{name}.json").read_text())
        self.cli("import:workflow", "--separate", f"--input={folder}")
        self.cli("update:workflow", "--all", "--active=true")

    def start(self) -> N8n:
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(
            [self.binary, "start"], env=self.env(), cwd=self.home, stdout=log, stderr=log
        )
        log.close()
        wait_for(self.ready, START_TIMEOUT, f"n8n on {self.port} to serve every webhook")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"n8n exited early:\n{self.log()[-4000:]}")
        try:
            if httpx.get(self.url + "/healthz/readiness", timeout=2).status_code != 200:
                return False
            return all(self.registered(path) for path in WORKFLOWS)
        except httpx.HTTPError:
            return False

    def registered(self, path: str) -> bool:
        """Is the POST webhook live? n8n answers a GET to it with a hint naming POST."""
        response = httpx.get(self.webhook(path), timeout=2)
        return response.status_code == 404 and "POST" in response.text

    def webhook(self, path: str) -> str:
        return f"{self.url}/webhook/{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def n8n_process(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[N8n]:
    binary = n8n_binary()
    if binary is None:
        unavailable(f"n8n is not installed; install it with: {INSTALL_COMMAND}")
    process = N8n(binary, tmp_path_factory.mktemp("n8n"), upstream.url)
    process.setup()
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.fixture
def n8n(n8n_process: N8n) -> N8n:
    """The module's n8n, started again if a test killed it."""
    if not n8n_process.running():
        n8n_process.start()
    return n8n_process


def archiver(make: Make, n8n: N8n, path: str, **settings: str) -> Server:
    return make(
        upstream="n8n",
        upstream_url=n8n.webhook(path),
        upstream_jwt_secret=WORKFLOW_SECRET,
        upstream_timeout="60",
        **settings,
    )


def ask(server: Server, user: str, message: str) -> httpx.Response:
    """POST /chat, waiting as long as a reply through n8n may take on a busy machine."""
    headers = server.headers(user)
    return httpx.post(server.url + "/chat", json={"message": message}, headers=headers, timeout=90)


def journal(server: Server, user: str) -> list[dict[str, Any]]:
    """The user's current.yaml, read from disk: every entry whole (a YAML 1.2 document
    that also loads in a YAML 1.1 loader), ending with a newline, nothing torn."""
    path = server.user_dir(user) / "current.yaml"
    raw = path.read_text()
    assert raw.endswith("\n"), f"a torn last entry in {path}:\n{raw[-300:]}"
    doc = yaml.safe_load(raw)
    return doc["messages"]  # type: ignore[no-any-return]


def reply_events(sse: SSEClient) -> list[dict[str, Any]]:
    events = []
    while True:
        event = sse.next("reply", timeout=60).data
        events.append(event)
        if event["type"] in ("end", "error"):
            return events


def items_since(sse: SSEClient, index: int) -> list[str]:
    return [
        e.data["content"]
        for e in sse.seen[index:]
        if e.event == "reply" and e.data["type"] == "item"
    ]


def reply_events_since(sse: SSEClient, index: int) -> list[dict[str, Any]]:
    """The reply events after ``index``, once the reply has ended."""
    wait_for(
        lambda: any(
            e.event == "reply" and e.data["type"] in ("end", "error") for e in sse.seen[index:]
        ),
        60,
        "the reply's end",
    )
    return [e.data for e in sse.seen[index:] if e.event == "reply"]


def test_a_streamed_reply_arrives_live_checked_inside_the_workflow(
    make_server: Make, n8n: N8n, upstream: Upstream
) -> None:
    server = archiver(make_server, n8n, "archiver-stream")
    with (
        SSEClient(server.url, mint("ada|7")) as sse,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        sse.next("ready")
        assert ask(server, "ada|7", "hello there").status_code == 200
        reply_events(sse)
        before = len(sse.seen)
        pending = pool.submit(ask, server, "ada|7", "where is my order")
        wait_for(lambda: items_since(sse, before), 60, "the second reply's first item")
        live = not pending.done()  # the item came while POST /chat was still waiting
        response = pending.result(60)
        events = reply_events_since(sse, before)
    assert response.status_code == 200, response.text
    text = response.json()["reply"]["text"]
    # The Code node verified the token and the history and said so with the token's sub.
    assert text == "verified sub=ada|7 history=3 says where is my order"
    items = [e["content"] for e in events if e["type"] == "item"]
    assert live and len(items) >= 3, f"streamed live: {live}; items: {items}"
    assert "".join(items) == text and events[-1]["type"] == "end"
    messages = journal(server, "ada|7")
    assert [(m["role"], m["text"]) for m in messages[-2:]] == [
        ("user", "where is my order"),
        ("assistant", text),
    ]
    assert not any(m.get("interrupted") for m in messages)
    # n8n's own OpenAI client (LangChain's) asked the fake; its body is valid for the API.
    model_call = upstream.requests[-1]
    assert model_call["path"] == "/echo/chat/completions"
    assert validate_request_body(model_call["body"])["stream"] is True
    assert WORKFLOW_SECRET not in server.log()


@pytest.mark.parametrize(
    ("path", "code", "detail"),
    [
        # n8n's error chunk for a node that throws has no content, only the node's name.
        ("archiver-fail", "upstream_reported", "The n8n workflow failed at its step 'Fail'."),
        (
            "archiver-stream-nothing",
            "upstream_garbage",
            "The n8n webhook's answer was empty.",
        ),
    ],
)
def test_a_failed_workflow_gives_the_reply_error_and_journals_no_answer(
    make_server: Make, n8n: N8n, path: str, code: str, detail: str
) -> None:
    server = archiver(make_server, n8n, path)
    with SSEClient(server.url, mint("bea")) as sse:
        sse.next("ready")
        response = ask(server, "bea", "please fail")
        events = reply_events(sse)
    assert response.status_code == 502, response.text
    assert response.json() == {"error": code, "detail": detail}
    assert events[-1] == {**events[-1], "type": "error", "content": detail}
    assert not any(e["type"] == "item" for e in events)
    messages = journal(server, "bea")
    assert [(m["role"], m["text"]) for m in messages] == [
        ("user", "please fail"),
        ("error", detail),
    ]


def test_n8n_killed_mid_reply_journals_the_partial_reply_and_the_error(
    make_server: Make, n8n: N8n
) -> None:
    server = archiver(make_server, n8n, "archiver-slow")
    with (
        SSEClient(server.url, mint("cid")) as sse,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        sse.next("ready")
        pending = pool.submit(ask, server, "cid", "tell me a long story")
        wait_for(
            lambda: sum(e.event == "reply" and e.data["type"] == "item" for e in sse.seen) >= 2,
            60,
            "two streamed items",
        )
        n8n.kill()
        response = pending.result(60)
        events = reply_events(sse)
    assert response.status_code == 502, response.text
    error = response.json()
    assert error["error"] == "upstream_cut", error
    items = "".join(
        e.data["content"] for e in sse.seen if e.event == "reply" and e.data["type"] == "item"
    )
    assert events[-1]["type"] == "error" and items.startswith("w0 w1 ")
    messages = journal(server, "cid")
    assert [m["role"] for m in messages] == ["user", "assistant", "error"]
    partial = messages[1]
    assert partial["interrupted"] is True and partial["text"] == items
    assert messages[2]["text"] == error["detail"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("archiver-last-node", "n8n says: is it there?"),
        ("archiver-respond-json", "n8n says: is it there?"),
        ("archiver-respond-text", "n8n says:\nis it there?"),
    ],
)
def test_non_streaming_modes_answer_whole(
    make_server: Make, n8n: N8n, path: str, expected: str
) -> None:
    server = archiver(make_server, n8n, path)
    with SSEClient(server.url, mint("dee")) as sse:
        sse.next("ready")
        response = ask(server, "dee", "is it there?")
        events = reply_events(sse)
    assert response.status_code == 200, response.text
    assert response.json()["reply"]["text"] == expected
    assert events[-1]["type"] == "end"
    assert "".join(e["content"] for e in events if e["type"] == "item") == expected
    messages = journal(server, "dee")
    assert [(m["role"], m["text"]) for m in messages] == [
        ("user", "is it there?"),
        ("assistant", expected),
    ]
