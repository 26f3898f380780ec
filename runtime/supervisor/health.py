"""A minimal HTTP endpoint for probes: ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import SocketStream, TaskStatus
from anyio.streams.stapled import MultiListener

from runtime.errors import SupervisorError
from runtime.log import get_logger

__all__ = ["HealthServer", "Probe"]

log = get_logger(__name__)


@dataclass(frozen=True)
class Probe:
    """What the endpoints report, read fresh on every request.

    ``ready`` returns ``None`` when ready, else why not (the body of the 503 reply).
    """

    alive: Callable[[], bool]
    ready: Callable[[], str | None]
    metrics: Callable[[], str]


_STATUS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """Serve *probe* on ``host:port`` until cancelled.

    server = HealthServer(probe, "127.0.0.1", 8080)
    listener = await server.listen()  # SupervisorError when the port is taken
    port = await tg.start(server.serve, listener)
    """

    def __init__(self, probe: Probe, host: str, port: int) -> None:
        self.probe = probe
        self.host = host
        self.port = port

    async def listen(self) -> MultiListener[SocketStream]:
        """Bind the port; a port in use or an address we cannot bind is one clear error.

        Raises:
            SupervisorError: the address cannot be bound (names ``supervisor.http_port``).
        """
        try:
            return await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        except OSError as exc:
            raise SupervisorError(_bind_error(self.host, self.port, exc)) from exc

    async def serve(
        self,
        listener: MultiListener[SocketStream] | None = None,
        *,
        task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on *listener* (bound by :meth:`listen` when not given) until cancelled."""
        listener = listener or await self.listen()
        async with listener:
            port = int(listener.listeners[0].extra(anyio.abc.SocketAttribute.local_port))
            log.info("health.listening", host=self.host, port=port)
            task_status.started(port)
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            with anyio.move_on_after(5):
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    try:
                        request += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                status, body, kind = self._route(request)
                head = (
                    f"HTTP/1.1 {status} {_STATUS[status]}\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                try:
                    await stream.send(head.encode() + body)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return

    def _route(self, request: bytes) -> tuple[int, bytes, str]:
        parts = request.split(b" ", 2)
        if len(parts) < 2:
            return 404, b"bad request\n", "text/plain"
        method, path = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, b"GET only\n", "text/plain"
        if path == b"/healthz":
            ok = self.probe.alive()
            return (200, b"ok\n", "text/plain") if ok else (503, b"not alive\n", "text/plain")
        if path == b"/readyz":
            why = self.probe.ready()
            if why is None:
                return 200, b"ready\n", "text/plain"
            return 503, f"not ready: {why}\n".encode(), "text/plain"
        if path == b"/metrics":
            return 200, self.probe.metrics().encode(), "text/plain; version=0.0.4"
        return 404, b"not found\n", "text/plain"


def _bind_error(host: str, port: int, exc: OSError) -> str:
    what = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        what = "the port is in use (another supervisor on this host?)"
    return (
        f"cannot serve /healthz, /readyz and /metrics on {host}:{port}: {what}. "
        "Choose another port with supervisor.http_port (--http-port N, or "
        "AGENTS_WORKER_SUPERVISOR_HTTP_PORT=N), or turn the endpoints off with 0"
    )
