"""``/healthz`` and ``/readyz``: what a load balancer or Kubernetes asks the supervisor.

``/healthz`` is 200 ``ok`` while the supervisor has not given up (503 ``not alive``);
``/readyz`` is 200 ``ready`` while some worker is ready and not paused by a Redis fault, else
503 ``not ready: <why>``. GET and HEAD only (405 otherwise). Without a probe (``agents-worker
dashboard``), both say 200: the process serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

__all__ = ["Probe", "SupervisorFigures", "probe_routes"]


@dataclass(frozen=True)
class SupervisorFigures:
    """The supervisor's own gauges, served on ``/metrics`` beside the fleet's figures."""

    ready: int
    """Workers that reported READY."""
    running: int
    """Worker processes running (starting, ready or draining)."""
    paused: int
    """Ready workers that a Redis fault (full, read-only, loading…) holds paused."""
    restarts: int
    """Worker processes restarted after a crash."""
    backlog: int
    """Entries waiting or in flight (the autoscaler's last reading)."""


@dataclass(frozen=True)
class Probe:
    """What the endpoints report, read fresh on every request.

    ``ready`` returns ``None`` when ready, else why not (the body of the 503 reply).
    """

    alive: Callable[[], bool]
    ready: Callable[[], str | None]
    figures: Callable[[], SupervisorFigures]


_METHODS = ["GET", "HEAD"]


def probe_routes(probe: Probe | None) -> list[BaseRoute]:
    """The routes of ``/healthz`` and ``/readyz`` for *probe* (``None``: always 200)."""

    async def healthz(request: Request) -> Response:
        if probe is None or probe.alive():
            return PlainTextResponse("ok\n")
        return PlainTextResponse("not alive\n", status_code=503)

    async def readyz(request: Request) -> Response:
        why = None if probe is None else probe.ready()
        if why is None:
            return PlainTextResponse("ready\n")
        return PlainTextResponse(f"not ready: {why}\n", status_code=503)

    return [
        Route("/healthz", healthz, methods=_METHODS),
        Route("/readyz", readyz, methods=_METHODS),
    ]
