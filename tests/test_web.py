"""The HTTP side (issue 11, item 4): Starlette served by uvicorn, probes, the token, the bind.

Each test serves :func:`runtime.web.create_app` with :func:`runtime.web.serve` on a free port
of 127.0.0.1, in the test's own task group, and talks to it over real HTTP (urllib, in a
thread). `/metrics` has tests of its own (tests/test_web_metrics.py).
"""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest
import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from runtime import Keys, Settings, SupervisorError
from runtime.web import (
    DASHBOARD_ENDPOINT,
    Probe,
    SupervisorFigures,
    WebState,
    bind_sockets,
    create_app,
    require_token,
    serve,
)
from runtime.web.auth import TOKEN_UNSET
from tests.conftest import make_settings


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Reply:
    """One HTTP request (blocking): the reply, whatever its status."""
    prepared = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(prepared, timeout=5) as reply:
            return Reply(reply.status, dict(reply.headers.items()), reply.read().decode())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers.items()), exc.read().decode())


async def fetch(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    url = f"http://127.0.0.1:{port}{path}"
    return await anyio.to_thread.run_sync(request, url, method, headers)


@asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[int]:
    """Serve *app* on a free port until the block ends; yields the port."""
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, app, "127.0.0.1", 0)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


class Flags:
    """A supervisor's state, as the probe reads it."""

    def __init__(self) -> None:
        self.alive = True
        self.why: str | None = "no worker is ready"

    def probe(self) -> Probe:
        figures = SupervisorFigures(ready=1, running=2, paused=0, restarts=3, backlog=4)
        return Probe(lambda: self.alive, lambda: self.why, lambda: figures)


@pytest.fixture
async def state(redis_url: str, keys: Keys) -> AsyncIterator[WebState]:
    conn = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield WebState(conn, keys, make_settings(redis_url, keys.prefix), None)
    finally:
        await conn.aclose()


async def test_probes_say_what_the_supervisor_says(state: WebState) -> None:
    flags = Flags()
    state.probe = flags.probe()
    async with served(create_app(state, dashboard=False)) as port:
        assert (await fetch(port, "/healthz")).body == "ok\n"
        reply = await fetch(port, "/readyz")
        assert (reply.status, reply.body) == (503, "not ready: no worker is ready\n")
        flags.why = None
        reply = await fetch(port, "/readyz")
        assert (reply.status, reply.body) == (200, "ready\n")
        assert reply.headers["content-type"].startswith("text/plain")
        flags.alive = False
        assert (await fetch(port, "/healthz")).status == 503
        head = await fetch(port, "/readyz", "HEAD")
        assert (head.status, head.body) == (200, "")
        for method in ("POST", "PUT", "DELETE"):
            assert (await fetch(port, "/readyz", method)).status == 405
        assert (await fetch(port, "/nope")).status == 404


async def test_without_a_supervisor_the_probes_say_the_process_serves(state: WebState) -> None:
    async with served(create_app(state, dashboard=False)) as port:
        assert (await fetch(port, "/healthz")).body == "ok\n"
        assert (await fetch(port, "/readyz")).body == "ready\n"


async def test_serving_leaves_the_signal_handlers_alone_and_stops_on_cancel(
    state: WebState,
) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    async with served(create_app(state, dashboard=False)) as port:
        assert (await fetch(port, "/healthz")).status == 200
        during = {sig: signal.getsignal(sig) for sig in before}
    assert during == before  # uvicorn installed none: SIGTERM belongs to the supervisor
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass  # stopped, its socket closed


async def test_stopping_cuts_a_request_that_never_ends(state: WebState) -> None:
    """A live stream (the dashboard's) cannot hold the server up: cancelled after a grace."""

    entered = anyio.Event()

    async def forever(request: Request) -> PlainTextResponse:
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    app = Starlette(routes=[Route("/forever", forever)])
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, app, "127.0.0.1", 0)
        tg.start_soon(_swallow, fetch(port, "/forever"))
        await entered.wait()
        tg.cancel_scope.cancel()
    # the group ended: the server returned although a request was still in flight


async def _swallow(call: object) -> None:
    try:
        await call  # type: ignore[misc]
    except Exception:  # the connection is cut: what we wanted
        return


def test_a_port_in_use_is_one_clear_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SupervisorError) as caught:
            bind_sockets("127.0.0.1", port)
        text = str(caught.value)
        assert f"127.0.0.1:{port}" in text and "in use" in text
        assert "supervisor.http_port" in text and "--http-port" in text
        with pytest.raises(SupervisorError) as caught:
            bind_sockets("127.0.0.1", port, DASHBOARD_ENDPOINT)
        assert "web.port" in str(caught.value) and "--port" in str(caught.value)


def _guarded(settings: Settings) -> Starlette:
    async def purge(request: Request) -> PlainTextResponse:
        require_token(request, settings)
        return PlainTextResponse("purged\n")

    return Starlette(routes=[Route("/purge", purge, methods=["POST"])])


async def test_every_change_is_refused_without_a_token_setting(redis_url: str, keys: Keys) -> None:
    for token in (None, ""):
        settings = make_settings(redis_url, keys.prefix, web__token=token)
        async with served(_guarded(settings)) as port:
            for headers in ({}, {"Authorization": "Bearer anything"}, {"Authorization": "Bearer "}):
                reply = await fetch(port, "/purge", "POST", headers)
                assert (reply.status, reply.body) == (403, TOKEN_UNSET), headers
    assert "web.token" in TOKEN_UNSET


async def test_a_change_needs_the_right_bearer_token(redis_url: str, keys: Keys) -> None:
    settings = make_settings(redis_url, keys.prefix, web__token="s3cret-t0ken")
    async with served(_guarded(settings)) as port:
        missing = await fetch(port, "/purge", "POST")
        assert missing.status == 401 and "Authorization: Bearer" in missing.body
        assert missing.headers["www-authenticate"].startswith("Bearer")
        basic = await fetch(port, "/purge", "POST", {"Authorization": "Basic czNjcmV0"})
        assert basic.status == 401
        for wrong in ("s3cret", "s3cret-t0ken-", "S3CRET-T0KEN", "x" * 4000):
            reply = await fetch(port, "/purge", "POST", {"Authorization": f"Bearer {wrong}"})
            assert (reply.status, reply.body) == (403, "wrong token (it must equal web.token)")
        right = await fetch(port, "/purge", "POST", {"Authorization": "Bearer s3cret-t0ken"})
        assert (right.status, right.body) == (200, "purged\n")
        lower = await fetch(port, "/purge", "POST", {"Authorization": "bearer s3cret-t0ken"})
        assert lower.status == 200  # the scheme is case-insensitive (RFC 7235)


def test_the_endpoints_bind_to_loopback_by_default(redis_url: str, keys: Keys) -> None:
    settings = make_settings(redis_url, keys.prefix)
    assert settings.web.host == "127.0.0.1"
    assert settings.supervisor.http_host == "127.0.0.1"
