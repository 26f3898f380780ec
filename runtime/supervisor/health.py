"""A minimal HTTP endpoint for probes: ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import SocketStream, TaskStatus

from runtime.log import get_logger

__all__ = ["HealthServer", "Probe"]

log = get_logger(__name__)


@dataclass(frozen=True)
class Probe:
    """What the endpoints report, read fresh on every request."""

    alive: Callable[[], bool]
    ready: Callable[[], bool]
    metrics: Callable[[], str]


_STATUS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """Serve *probe* on ``host:port`` until cancelled."""

    def __init__(self, probe: Probe, host: str, port: int) -> None:
        self.probe = probe
        self.host = host
        self.port = port

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
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
            ok = self.probe.ready()
            return (200, b"ready\n", "text/plain") if ok else (503, b"not ready\n", "text/plain")
        if path == b"/metrics":
            return 200, self.probe.metrics().encode(), "text/plain; version=0.0.4"
        return 404, b"not found\n", "text/plain"
