"""Serve an ASGI app with uvicorn inside the caller's anyio task group.

    sockets = bind_sockets("127.0.0.1", 8080)        # SupervisorError when the port is taken
    port = await tg.start(serve, app, "127.0.0.1", 8080, sockets)   # until cancelled

The sockets are bound before anything else starts, so a port in use (or an address that is
not this host's) is one clear error naming the setting that chose it, not a traceback from
deep inside a server. uvicorn installs no signal handlers here: SIGTERM and SIGINT belong to
the supervisor (or the command) that runs it, which cancels the serving task; the server then
sets the app's :attr:`WebState.closing <runtime.web.state.WebState.closing>` (the dashboard's
live streams end on it), stops accepting, lets the requests in flight finish (any still
running after :data:`GRACE` seconds are cut) and returns. On a loopback address the app is
served behind a ``Host`` header check (:func:`runtime.web.auth.guard_host`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.types import ASGIApp

from runtime.errors import SupervisorError
from runtime.log import get_logger
from runtime.web.auth import guard_host
from runtime.web.state import WebState

__all__ = [
    "DASHBOARD_ENDPOINT",
    "GRACE",
    "SUPERVISOR_ENDPOINT",
    "Endpoint",
    "bind_sockets",
    "serve",
    "supervisor_endpoint",
    "url_of",
]

log = get_logger(__name__)

GRACE = 2.0
"""Seconds the requests in flight (a dashboard's live stream) get when the server stops."""


@dataclass(frozen=True)
class Endpoint:
    """What a bind error names: the endpoints served and the settings that chose the address.

    *setting*, *flag*, *env* and *zero* say how to choose another port; *host_setting* and
    *host_how* how to choose another address (an address not of this host, a name that does
    not resolve).
    """

    what: str
    setting: str
    flag: str
    env: str
    zero: str
    host_setting: str = field(default="the host setting", kw_only=True)
    host_how: str = field(default="", kw_only=True)


def supervisor_endpoint(dashboard: bool) -> Endpoint:
    """The supervisor's endpoint; *dashboard*: it serves the dashboard too (``web.dashboard``)."""
    what = "/healthz, /readyz, /metrics and the dashboard" if dashboard else _PROBES
    return Endpoint(
        what,
        "supervisor.http_port",
        "--http-port",
        "AGENTS_WORKER_SUPERVISOR_HTTP_PORT",
        "turn the endpoints off with 0",
        host_setting="supervisor.http_host",
        host_how="--set supervisor.http_host=ADDRESS, or AGENTS_WORKER_SUPERVISOR_HTTP_HOST",
    )


_PROBES = "/healthz, /readyz and /metrics"
SUPERVISOR_ENDPOINT = supervisor_endpoint(dashboard=False)
DASHBOARD_ENDPOINT = Endpoint(
    "the dashboard",
    "web.port",
    "--port",
    "AGENTS_WORKER_WEB_PORT",
    "let the system pick a free port with 0",
    host_setting="web.host",
    host_how="--host ADDRESS, or AGENTS_WORKER_WEB_HOST",
)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers (they would fight the supervisor's)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_sockets(
    host: str, port: int, endpoint: Endpoint = SUPERVISOR_ENDPOINT
) -> list[socket.socket]:
    """Listening sockets for every address of *host* (port 0: one free port for all).

    Raises:
        SupervisorError: an address cannot be bound; the message names the setting.
    """
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
        for family, kind, proto, _, address in dict.fromkeys(
            (i[0], i[1], i[2], "", i[4]) for i in infos
        ):
            if sockets:  # every address on the port the first one got
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sockets.append(_listen(family, kind, proto, address))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise SupervisorError(_bind_error(host, port, exc, endpoint)) from exc
    return sockets


def _listen(
    family: socket.AddressFamily, kind: socket.SocketKind, proto: int, address: tuple[object, ...]
) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)  # connections wait in the backlog until the server accepts them
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(
    app: ASGIApp,
    host: str,
    port: int,
    sockets: list[socket.socket] | None = None,
    *,
    endpoint: Endpoint = SUPERVISOR_ENDPOINT,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *app* on *sockets* (bound here when not given) until cancelled.

    Reports the port it serves on through *task_status*; closes the sockets on the way out.

    Raises:
        SupervisorError: the address cannot be bound (when *sockets* is not given).
    """
    sockets = sockets if sockets is not None else bind_sockets(host, port, endpoint)
    bound = int(sockets[0].getsockname()[1])
    closing = _closing_of(app)
    _quiet_uvicorn()
    config = uvicorn.Config(
        guard_host(app, host),
        host=host,
        port=bound,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(GRACE),
    )
    server = _Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_serve_shielded, server, sockets)
            log.info("web.listening", host=host, port=bound, url=url_of(host, bound))
            task_status.started(bound)
            try:
                await anyio.sleep_forever()
            finally:
                if closing is not None:
                    closing.set()  # live streams end now, not when the grace runs out
                server.should_exit = True  # it stops within a tick
    finally:
        for sock in sockets:
            sock.close()


def _closing_of(app: ASGIApp) -> anyio.Event | None:
    """The :attr:`WebState.closing` of an app made by :func:`runtime.web.create_app`."""
    state = getattr(getattr(app, "state", None), "web", None)
    return state.closing if isinstance(state, WebState) else None


async def _serve_shielded(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
    # shielded: a cancelled server would leave its connections open; it stops on should_exit
    with anyio.CancelScope(shield=True):
        await server.serve(sockets=sockets)


def _quiet_uvicorn() -> None:
    """uvicorn's start and stop lines at INFO would duplicate ``web.listening``."""
    logger = logging.getLogger("uvicorn.error")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def url_of(host: str, port: int) -> str:
    """The URL a browser on this host opens for a server bound to *host*:*port*."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def _bind_error(host: str, port: int, exc: OSError, endpoint: Endpoint) -> str:
    where = f"cannot serve {endpoint.what} on {host}:{port}"
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        why = "no such host" if isinstance(exc, socket.gaierror) else "not an address of this host"
        how = f" ({endpoint.host_how})" if endpoint.host_how else ""
        return (
            f"{where}: {why} ({exc.strerror or exc}). Choose an address of this host with "
            f"{endpoint.host_setting}{how}, e.g. 127.0.0.1 (the default)"
        )
    what = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        what = "the port is in use (another supervisor or dashboard on this host?)"
    return (
        f"{where}: {what}. Choose another port with "
        f"{endpoint.setting} ({endpoint.flag} N, or {endpoint.env}=N), or {endpoint.zero}"
    )
