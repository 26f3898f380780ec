"""The dashboard's JSON API and its live feed.

    GET  /api/overview                     fleet, inboxes, totals
    GET  /api/runs?status=&agent=&limit=   recent runs (filtered over a bounded window)
    GET  /api/runs/{id}                    a run's record, events and span waterfall
    GET  /api/charts                       runs per minute and latency (TimeSeries)
    GET  /api/dlq[?target=]                dead-letter counts (and one target's letters)
    GET  /api/stream?…                     server-sent events (runtime.web.dashboard.live)
    POST /api/dlq/{target}/replay          {"ids": [...]} or {"all": true}   (token)
    POST /api/runs/{id}/cancel                                              (token)

Errors are JSON ``{"error": "…"}``: 400 for a bad parameter, 404 for an unknown run, 503 when
Redis cannot be read, 500 for anything else (logged with its traceback); a change without the
token is refused by :func:`runtime.web.auth.require_token` (401/403, plain text).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgspec
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from runtime.errors import AgentsWorkerError, KeyNameError
from runtime.keys import validate_name
from runtime.log import get_logger
from runtime.observability.lifecycle import STATUSES
from runtime.settings.model import Settings
from runtime.web.auth import require_token
from runtime.web.dashboard.live import Feed, FeedQuery
from runtime.web.dashboard.readers import DashboardReader
from runtime.web.dashboard.views import encode

__all__ = ["BadRequest", "DashboardApi", "EventStream", "api_routes"]

log = get_logger(__name__)

LIMIT_MAX = 200
Endpoint = Callable[[Request], Awaitable[Response]]


class BadRequest(AgentsWorkerError, ValueError):
    """A parameter of a dashboard call is not one it can serve."""


class _ReplayBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ids: list[str] | None = None
    all: bool = False


def json_response(value: Any, status: int = 200) -> Response:
    return Response(encode(value), status_code=status, media_type="application/json")


def _answers(endpoint: Endpoint) -> Endpoint:
    """Errors as JSON: a bad parameter 400, Redis unreadable 503, anything else 500
    (logged with its traceback)."""

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (BadRequest, KeyNameError) as exc:
            return json_response({"error": str(exc)}, 400)
        except AgentsWorkerError as exc:
            return json_response({"error": str(exc)}, 503)
        except HTTPException:
            raise  # require_token's refusals: Starlette answers them
        except Exception as exc:
            log.exception("dashboard.request_failed", path=request.url.path, error=repr(exc))
            message = f"cannot answer ({type(exc).__name__}: {exc}); the server's log has more"
            return json_response({"error": message}, 500)

    return wrapped


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that ends as soon as the client goes, whatever the
    server's ASGI version (the feed must not read Redis for nobody)."""

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                with contextlib.suppress(OSError):  # the client went away mid-send
                    await self.stream_response(send)
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()


def _query(request: Request) -> FeedQuery:
    params = request.query_params
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(sorted(STATUSES))}, not {status!r}")
    agent = params.get("agent") or None
    if agent is not None:
        validate_name("agent", agent)
    run = params.get("run")
    if run is not None:
        validate_name("run", run)
    dlq = params.get("dlq")
    if dlq:
        validate_name("target", dlq)
    return FeedQuery(run=run, dlq=dlq, status=status, agent=agent, limit=_limit(params))


def _limit(params: QueryParams) -> int:
    """``limit``, 1 to ``LIMIT_MAX`` (ASCII digits only: ``int`` refuses some that
    ``str.isdigit`` accepts, such as ``²``)."""
    raw = params.get("limit") or "50"
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= LIMIT_MAX):
        raise BadRequest(f"limit must be a whole number from 1 to {LIMIT_MAX}")
    return int(raw)


class DashboardApi:
    """The endpoints of the API, reading with one :class:`DashboardReader`."""

    def __init__(
        self, reader: DashboardReader, settings: Settings, closing: anyio.Event | None = None
    ) -> None:
        self.reader = reader
        self.settings = settings
        self.closing = closing
        """Set when the server begins to stop: live feeds end on it."""

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/overview", _answers(self.overview)),
            Route("/api/runs", _answers(self.runs)),
            Route("/api/runs/{run_id}", _answers(self.run)),
            Route("/api/runs/{run_id}/cancel", _answers(self.cancel), methods=["POST"]),
            Route("/api/charts", _answers(self.charts)),
            Route("/api/dlq", _answers(self.dlq)),
            Route("/api/dlq/{target}/replay", _answers(self.replay), methods=["POST"]),
            Route("/api/stream", _answers(self.stream)),
        ]

    async def overview(self, request: Request) -> Response:
        return json_response(await self.reader.overview())

    async def runs(self, request: Request) -> Response:
        query = _query(request)
        page = await self.reader.runs(limit=query.limit, status=query.status, agent=query.agent)
        return json_response(page)

    async def run(self, request: Request) -> Response:
        run_id = validate_name("run", request.path_params["run_id"])
        detail = await self.reader.run(run_id)
        return json_response(detail, 200 if detail.run is not None else 404)

    async def charts(self, request: Request) -> Response:
        return json_response(await self.reader.charts())

    async def dlq(self, request: Request) -> Response:
        target = request.query_params.get("target") or None
        if target is not None:
            validate_name("target", target)
        return json_response(await self.reader.dlq(target))

    async def replay(self, request: Request) -> Response:
        require_token(request, self.settings)
        target = validate_name("target", request.path_params["target"])
        try:
            body = msgspec.json.decode(await request.body() or b"{}", type=_ReplayBody)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"send {{'ids': [...]}} or {{'all': true}}: {exc}") from exc
        if (body.ids is None) == (not body.all):
            raise BadRequest("name the letters to replay ('ids'), or send 'all': true")
        return json_response(await self.reader.replay(target, None if body.all else body.ids))

    async def cancel(self, request: Request) -> Response:
        require_token(request, self.settings)
        run_id = validate_name("run", request.path_params["run_id"])
        status = (await self.reader.runs_store.status(run_id)).get("status")
        if status is None:
            return json_response({"error": f"no run {run_id!r} (unknown, or expired)"}, 404)
        cancelled = await self.reader.cancel(run_id)
        return json_response({"run_id": run_id, "cancelled": cancelled, "status": status})

    async def stream(self, request: Request) -> Response:
        feed = Feed(self.reader, _query(request), closing=self.closing)
        return EventStream(feed.events())


def api_routes(
    reader: DashboardReader, settings: Settings, closing: anyio.Event | None = None
) -> list[BaseRoute]:
    """The routes of the API, reading with *reader*; live feeds end when *closing* is set."""
    return DashboardApi(reader, settings, closing).routes()
