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
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
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
    supervisor_endpoint,
)
from runtime.web.auth import TOKEN_UNSET, is_loopback
from runtime.web.probes import PING_LIMIT
from tests.conftest import free_port, make_settings


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


# --- stopping: live responses end on WebState.closing -----------------------------------------


async def test_serve_sets_closing_before_the_server_stops(state: WebState) -> None:
    """A live response that waits on ``state.closing`` ends by itself when serving stops:
    the client gets its whole answer, not a connection cut after the grace period."""
    waiting = anyio.Event()

    async def live(request: Request) -> PlainTextResponse:
        waiting.set()
        await state.closing.wait()
        return PlainTextResponse("closed\n")

    app = create_app(state, dashboard=False)
    app.router.routes.append(Route("/live", live))
    replies: list[Reply] = []
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, app, "127.0.0.1", 0)

        async def ask() -> None:
            replies.append(await fetch(port, "/live"))

        tg.start_soon(ask)
        await waiting.wait()
        assert not state.closing.is_set()
        tg.cancel_scope.cancel()
    assert state.closing.is_set()
    assert [(r.status, r.body) for r in replies] == [(200, "closed\n")]


# --- the Host header check on loopback (DNS rebinding) -----------------------------------------


def _get(host: str, port: int, path: str, header: str | None = None) -> Reply:
    return request(f"http://{host}:{port}{path}", headers={"Host": header} if header else None)


@asynccontextmanager
async def served_on(app: Starlette, host: str) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, app, host, 0)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


async def test_on_loopback_a_foreign_host_header_is_refused(state: WebState) -> None:
    app = create_app(state, dashboard=True)
    async with served_on(app, "127.0.0.1") as port:
        for name in ("127.0.0.1", "localhost", "LOCALHOST", "[::1]"):
            for header in (name, f"{name}:{port}", f"{name}:1234"):
                for path in ("/readyz", "/metrics", "/"):
                    reply = await anyio.to_thread.run_sync(_get, "127.0.0.1", port, path, header)
                    assert reply.status == 200, (header, path)
        for header in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "[::2]"):
            for path in ("/readyz", "/metrics", "/", "/api/overview", "/api/stream"):
                reply = await anyio.to_thread.run_sync(_get, "127.0.0.1", port, path, header)
                assert (reply.status, reply.body) == (400, "Invalid host header"), (header, path)


async def test_a_loopback_address_of_its_own_is_allowed_too(state: WebState) -> None:
    async with served_on(create_app(state, dashboard=False), "127.0.0.5") as port:
        own = await anyio.to_thread.run_sync(_get, "127.0.0.5", port, "/healthz", None)
        assert (own.status, own.body) == (200, "ok\n")  # Host: 127.0.0.5:<port>
        local = await anyio.to_thread.run_sync(_get, "127.0.0.5", port, "/healthz", "localhost")
        assert local.status == 200
        evil = await anyio.to_thread.run_sync(_get, "127.0.0.5", port, "/healthz", "evil.example")
        assert evil.status == 400


async def test_on_other_addresses_no_host_header_is_checked(state: WebState) -> None:
    """Bound to every interface, whatever stands in front of the port decides who comes in."""
    async with served_on(create_app(state, dashboard=False), "0.0.0.0") as port:
        for header in ("evil.example", "metrics.internal:9000", None):
            reply = await anyio.to_thread.run_sync(_get, "127.0.0.1", port, "/healthz", header)
            assert (reply.status, reply.body) == (200, "ok\n"), header


def test_which_bind_addresses_are_loopback() -> None:
    for host in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost", "LocalHost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.1.2.3", "192.168.0.7", "example.com", "fe80::1"):
        assert not is_loopback(host), host


# --- bind errors name the setting at fault -----------------------------------------------------


def test_an_address_not_of_this_host_names_the_host_setting() -> None:
    with pytest.raises(SupervisorError) as caught:
        bind_sockets("192.0.2.7", 0, supervisor_endpoint(dashboard=True))  # TEST-NET-1
    text = str(caught.value)
    assert text.startswith("cannot serve /healthz, /readyz, /metrics and the dashboard on ")
    assert "not an address of this host" in text
    assert "supervisor.http_host" in text and "AGENTS_WORKER_SUPERVISOR_HTTP_HOST" in text
    assert "port" not in text.split(": ", 1)[1]  # no "choose another port"
    with pytest.raises(SupervisorError) as caught:
        bind_sockets("192.0.2.7", 0, DASHBOARD_ENDPOINT)
    text = str(caught.value)
    assert "web.host" in text and "--host" in text and "port" not in text.split(": ", 1)[1]


def test_a_host_that_does_not_resolve_names_the_host_setting() -> None:
    with pytest.raises(SupervisorError) as caught:
        bind_sockets("no-such-host.invalid", 0, DASHBOARD_ENDPOINT)
    text = str(caught.value)
    assert text.startswith("cannot serve the dashboard on no-such-host.invalid:0: no such host")
    assert "web.host" in text and "port" not in text.split(": ", 1)[1]
    with pytest.raises(SupervisorError) as caught:
        bind_sockets("no-such-host.invalid", 0, supervisor_endpoint(dashboard=False))
    text = str(caught.value)
    assert text.startswith("cannot serve /healthz, /readyz and /metrics on ")
    assert "supervisor.http_host" in text


def test_a_port_in_use_on_the_supervisor_names_the_dashboard_it_serves() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SupervisorError) as caught:
            bind_sockets("127.0.0.1", port, supervisor_endpoint(dashboard=True))
    text = str(caught.value)
    assert "/healthz, /readyz, /metrics and the dashboard" in text and "in use" in text
    assert "supervisor.http_port" in text


# --- the standalone dashboard's /readyz asks Redis ---------------------------------------------


async def test_without_a_supervisor_readyz_is_503_while_redis_is_down(
    redis_url: str, keys: Keys
) -> None:
    dead = redis.asyncio.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    state = WebState(dead, keys, make_settings(redis_url, keys.prefix), None)
    try:
        async with served(create_app(state, dashboard=False)) as port:
            reply = await fetch(port, "/readyz")
            assert reply.status == 503
            assert reply.body.startswith("not ready: ping Redis: cannot reach Redis")
            assert (await fetch(port, "/readyz", "HEAD")).status == 503
            assert (await fetch(port, "/healthz")).body == "ok\n"  # the process serves
    finally:
        await dead.aclose()


async def test_without_a_supervisor_readyz_waits_about_a_second_for_a_pong(
    redis_url: str, keys: Keys
) -> None:
    """A Redis that accepts but never answers (a hung server) makes /readyz 503 too."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        silent = redis.asyncio.Redis(port=mute.getsockname()[1], retry=Retry(NoBackoff(), 0))
        state = WebState(silent, keys, make_settings(redis_url, keys.prefix), None)
        try:
            async with served(create_app(state, dashboard=False)) as port:
                reply = await fetch(port, "/readyz")  # the client gives up after 5 s
            assert (reply.status, reply.body) == (
                503,
                f"not ready: ping Redis: no answer within {PING_LIMIT:g} s\n",
            )
        finally:
            await silent.aclose()


async def test_with_a_supervisor_readyz_keeps_its_own_semantics(redis_url: str, keys: Keys) -> None:
    """The supervisor's /readyz is its workers' readiness (they ride out an outage paused),
    not a PING of its own."""
    dead = redis.asyncio.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    flags = Flags()
    flags.why = None
    state = WebState(dead, keys, make_settings(redis_url, keys.prefix), flags.probe())
    try:
        async with served(create_app(state, dashboard=False)) as port:
            assert (await fetch(port, "/readyz")).body == "ready\n"
    finally:
        await dead.aclose()
