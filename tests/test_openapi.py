"""The OpenAPI description (archiver/openapi.py): valid, committed, served, complete, true.

"True" means the live server's real answers (bodies, errors, SSE payloads) validate
against the schemas the description gives for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import OpenAPIV30SpecValidator
from starlette.routing import BaseRoute, Match

from archiver import openapi
from archiver.app import create_app
from archiver.config import Settings
from tests.helpers import Server, SSEClient, mint, wait_for

DOCS = Path(__file__).parent.parent / "docs" / "openapi.json"
REGENERATE = "python -m archiver.openapi > docs/openapi.json"
Make = Callable[..., Server]


def resolve(node: Any) -> Any:
    """``node`` with every ``$ref`` to a component schema replaced by the schema."""
    if isinstance(node, dict):
        if "$ref" in node:
            return resolve(openapi.SCHEMAS[node["$ref"].rsplit("/", 1)[-1]])
        return {key: resolve(value) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item) for item in node]
    return node


def check(schema: Any, instance: Any) -> None:
    OAS30Validator(resolve(schema)).validate(instance)


def response_schema(route: str, method: str, status: int, media: str = "application/json") -> Any:
    answer = openapi.document()["paths"][route][method]["responses"][str(status)]
    return answer["content"][media]["schema"]


def operations() -> list[tuple[str, str]]:
    return [(route, m) for route, methods in openapi.PATHS.items() for m in methods]


def sample(route: str) -> str:
    """A concrete path for a documented one: each {parameter} filled in."""
    return route.replace("{user}", "a%7C1").replace("{name}", "x.yaml").replace("{file}", "w.js")


def app_routes() -> list[BaseRoute]:
    return list(create_app(Settings()).routes)


def matches(route: BaseRoute, path: str, method: str) -> bool:
    scope = {"type": "http", "path": path, "method": method.upper(), "root_path": ""}
    return route.matches(scope)[0] == Match.FULL


def test_the_description_is_valid_openapi() -> None:
    OpenAPIV30SpecValidator(openapi.document()).validate()


def test_the_committed_copy_is_the_description() -> None:
    assert DOCS.read_text() == openapi.dumps(), f"docs/openapi.json is stale: {REGENERATE}"


def test_every_documented_operation_is_a_route_of_the_app() -> None:
    routes = app_routes()
    missing = [(m, r) for r, m in operations() if not any(matches(x, sample(r), m) for x in routes)]
    assert not missing, f"documented but not routed: {missing}"


def test_every_route_of_the_app_is_documented() -> None:
    documented = operations()
    undocumented = []
    for route in app_routes():
        methods = getattr(route, "methods", None) or {"GET"}
        for method in sorted(methods - {"HEAD"}):
            if not any(m == method.lower() and matches(route, sample(r), m) for r, m in documented):
                undocumented.append((method, getattr(route, "path", route)))
    assert not undocumented, f"routed but not in archiver/openapi.py PATHS: {undocumented}"


def test_operation_ids_are_unique_and_every_operation_says_its_auth() -> None:
    ops = [openapi.document()["paths"][r][m] for r, m in operations()]
    ids = [op["operationId"] for op in ops]
    assert len(set(ids)) == len(ids)
    for op in ops:
        assert "security" in op
        assert ("401" in op["responses"]) == bool(op["security"]), op["operationId"]


def test_the_server_serves_the_committed_copy(make_server: Make) -> None:
    server = make_server()
    response = httpx.get(server.url + "/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == json.loads(DOCS.read_text())


def test_real_answers_match_their_schemas(make_server: Make) -> None:
    server = make_server(echo_delay="0", disconnect_grace="0")
    token = mint("ann|1")
    auth = {"Authorization": f"Bearer {token}"}
    with SSEClient(server.url, token) as sse:
        check(
            response_schema("/dialog", "get", 200),
            httpx.get(server.url + "/dialog", headers=auth).json(),
        )
        ready = sse.next("ready")
        chat = httpx.post(server.url + "/chat", json={"message": "hi"}, headers=auth)
        check(response_schema("/chat", "post", 200), chat.json())
        for name in ("message", "reply", "message"):
            sse.next(name)
        check(
            response_schema("/dialog", "get", 200),
            httpx.get(server.url + "/dialog", headers=auth).json(),
        )
        archived = httpx.post(server.url + "/dialog/archive", headers=auth)
        check(response_schema("/dialog/archive", "post", 200), archived.json())
        sse.next("archived")
    events = openapi.document()["paths"]["/subscribe"]["get"]["responses"]["200"]["x-sse-events"]
    assert {e.event for e in sse.seen} >= {"ready", "message", "reply", "archived"}
    for event in [ready, *sse.seen]:
        check(events[event.event], event.data)
    listing = httpx.get(server.url + "/archives", headers=auth).json()
    check(response_schema("/archives", "get", 200), listing)
    one = httpx.get(
        server.url + "/archives/" + listing[0]["name"],
        headers={**auth, "Accept": "application/json"},
    )
    check(response_schema("/archives/{name}", "get", 200), one.json())
    check(response_schema("/health", "get", 200), httpx.get(server.url + "/health").json())
    admin = {"Authorization": f"Bearer {mint('root', admin=True)}"}
    # The archive above names its upstream and first-token time once the index has it.

    def stats() -> Any:
        figures = httpx.get(server.url + "/admin/stats", headers=admin).json()
        return figures if figures["archives"] else None

    figures = wait_for(stats, what="the stats to count the archive")
    check(response_schema("/admin/stats", "get", 200), figures)
    assert figures["problems_by_upstream"][0]["upstream"] == "echo"
    empty = httpx.post(server.url + "/chat", json={"message": " "}, headers=auth)
    assert empty.status_code == 400
    check(response_schema("/chat", "post", 400), empty.json())
    denied = httpx.get(server.url + "/dialog")
    assert denied.status_code == 401
    check(response_schema("/dialog", "get", 401), denied.json())
    forbidden = httpx.get(server.url + "/users", headers=auth)
    assert forbidden.status_code == 403
    check(response_schema("/users", "get", 403), forbidden.json())


def test_a_wrong_error_code_fails_the_schema() -> None:
    """The check above can fail: an undocumented code does not validate."""
    with pytest.raises(Exception, match="is not one of"):
        check(response_schema("/chat", "post", 400), {"error": "nope", "detail": "x"})


def test_the_401_codes_documented_are_every_code_auth_raises() -> None:
    """openapi_schemas.AUTH_CODES is the one list (tests/test_security.py checks answers
    against it): it must hold every code archiver/auth.py can give a refused token."""
    import re
    from pathlib import Path

    import archiver.auth
    from archiver.openapi_schemas import AUTH_CODES

    source = Path(archiver.auth.__file__).read_text()
    raised = set(re.findall(r'Rejected\(\s*"([a-z_]+)"', source))
    raised |= set(re.findall(r'reason: str = "([a-z_]+)"', source))
    assert len(raised) >= 9, raised
    assert raised <= set(AUTH_CODES), raised - set(AUTH_CODES)
