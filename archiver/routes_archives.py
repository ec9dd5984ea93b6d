"""The routes that read archives: listings, one archive (YAML, JSON, Markdown, HTML), the
admin's view of every user, full-text search and the stats.
"""

from __future__ import annotations

import sqlite3
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import searchapi, stats, transcripts
from .archives import Filter, parse_time
from .dialogfile import parse_dialog
from .httpkit import (
    ApiError,
    require_user,
    sessions_of,
)
from .indexer import Indexer
from .logs import log


async def _archives_of(request: Request, user: str) -> Response:
    infos = await sessions_of(request).threads.list_archives(user)
    return JSONResponse([info.as_json() for info in infos])


async def _archive_of(request: Request, user: str, name: str) -> Response:
    data = await sessions_of(request).threads.read_archive(user, name)
    if data is None:
        raise ApiError(404, "not_found", f"There is no archive named {name!r}.")
    form = request.query_params.get("format", "yaml")
    if form in ("md", "html"):
        parsed = await sessions_of(request).threads.run(parse_dialog, data)
        return _transcript(transcripts.Transcript(user, name, parsed), form)
    if form != "yaml":
        raise ApiError(400, "bad_format", "format is one of yaml, md, html.")
    if "application/json" in request.headers.get("accept", ""):
        parsed = await sessions_of(request).threads.run(parse_dialog, data)
        return JSONResponse(parsed.as_json())
    return Response(data, media_type="application/yaml; charset=utf-8")


def _transcript(item: transcripts.Transcript, form: str) -> Response:
    """An archive as a Markdown or printable HTML transcript (transcripts.py)."""
    if form == "md":
        return Response(transcripts.markdown(item), media_type="text/markdown; charset=utf-8")
    page = "".join(transcripts.html_document([item], title=f"Dialog {item.dialog.dialog}"))
    return Response(page, media_type="text/html; charset=utf-8")


async def archives(request: Request) -> Response:
    return await _archives_of(request, require_user(request).id)


async def archive(request: Request) -> Response:
    user = require_user(request)
    return await _archive_of(request, user.id, request.path_params["name"])


async def users(request: Request) -> Response:
    require_user(request, admin=True)
    layout = sessions_of(request).threads.journal.layout

    def summary() -> list[dict[str, Any]]:
        out = []
        for user in layout.users():
            try:
                current = layout.current_path(user)
            except ValueError:
                continue
            out.append(
                {
                    "user": user,
                    "archives": len(layout.archive_names(user)),
                    "current": current.exists(),
                }
            )
        return out

    return JSONResponse(await sessions_of(request).threads.run(summary))


async def user_archives(request: Request) -> Response:
    """``/users/{user}/archives[/{name}]``, with the user id taken from the raw path so an
    id containing an encoded ``/`` still addresses one user."""
    require_user(request, admin=True)
    raw = request.scope.get("raw_path", b"").decode("latin-1").split("?")[0]
    parts = [unquote(p) for p in raw.split("/")[2:]]
    if len(parts) == 2 and parts[1] == "archives" and parts[0]:
        return await _archives_of(request, parts[0])
    if len(parts) == 3 and parts[1] == "archives" and parts[0]:
        return await _archive_of(request, parts[0], parts[2])
    raise ApiError(404, "not_found", "No such route.")


async def search(request: Request) -> Response:
    """Full-text search over archives (searchapi decides who may see what)."""
    user = require_user(request)
    indexer = _index_of(request)
    try:
        wanted, limit, cursor = searchapi.read_request(request.query_params, user.id, user.admin)
    except searchapi.BadSearch as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    try:
        # anyio's threads, not the journal's: a slow search must not delay an append.
        page = await anyio.to_thread.run_sync(indexer.index.search, wanted, limit, cursor)
    except sqlite3.OperationalError as exc:
        # Busy past the timeout, or a disk error: the files are fine, the index is not.
        log.error("index.error", error=type(exc).__name__, detail=str(exc)[:200])
        raise ApiError(503, "search_unavailable", "Search is unavailable; try again.") from None
    return JSONResponse(searchapi.page_json(page))


async def admin_stats(request: Request) -> Response:
    """``GET /admin/stats[?since=&until=&user=]``: stats.py's figures, from the index."""
    require_user(request, admin=True)
    indexer = _index_of(request)
    params = request.query_params
    try:
        since, until = (
            None if not params.get(k) else parse_time(params[k], end=k == "until")
            for k in ("since", "until")
        )
    except ValueError as exc:
        raise ApiError(400, "bad_time", f"{str(exc)[0].upper()}{str(exc)[1:]}.") from None
    where = Filter(user=params.get("user") or None, since=since, before=until)

    def figures() -> dict[str, Any]:
        return stats.compute(indexer.index.stat_rows(where))

    try:
        body = await anyio.to_thread.run_sync(figures)
    except sqlite3.OperationalError as exc:
        log.error("index.error", error=type(exc).__name__, detail=str(exc)[:200])
        raise ApiError(503, "search_unavailable", "Stats are unavailable; try again.") from None
    return JSONResponse(body)


def _index_of(request: Request) -> Indexer:
    indexer = sessions_of(request).index
    if indexer is None:
        detail = "The search index is turned off on this server (ARCHIVER_SEARCH_INDEX)."
        raise ApiError(503, "search_off", detail)
    return indexer
