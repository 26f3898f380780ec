"""``/healthz`` and ``/readyz``: what a load balancer or Kubernetes asks the supervisor.

``/healthz`` is 200 ``ok`` while the supervisor has not given up (503 ``not alive``);
``/readyz`` is 200 ``ready`` while some worker is ready and not paused by a Redis fault, else
503 ``not ready: <why>``. GET and HEAD only (405 otherwise). Without a probe (``agents-worker
dashboard``), ``/healthz`` says 200 (the process serves) and ``/readyz`` says 200 while Redis
answers a PING within :data:`PING_LIMIT` seconds, else 503 ``not ready: <why>``: a dashboard
that cannot read Redis shows nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anyio
import redis.asyncio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from runtime.errors import RedisError
from runtime.redis.connection import translate_errors

__all__ = ["PING_LIMIT", "Probe", "SupervisorFigures", "probe_routes"]

PING_LIMIT = 1.0
"""Seconds the dashboard's ``/readyz`` waits for Redis' PONG."""


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


def probe_routes(probe: Probe | None, client: redis.asyncio.Redis | None = None) -> list[BaseRoute]:
    """The routes of ``/healthz`` and ``/readyz`` for *probe*; without one, ``/readyz`` asks
    *client* for a PING (no client either: always 200)."""

    async def healthz(request: Request) -> Response:
        if probe is None or probe.alive():
            return PlainTextResponse("ok\n")
        return PlainTextResponse("not alive\n", status_code=503)

    async def readyz(request: Request) -> Response:
        if probe is not None:
            why = probe.ready()
        else:
            why = None if client is None else await _redis_unready(client)
        if why is None:
            return PlainTextResponse("ready\n")
        return PlainTextResponse(f"not ready: {why}\n", status_code=503)

    return [
        Route("/healthz", healthz, methods=_METHODS),
        Route("/readyz", readyz, methods=_METHODS),
    ]


async def _redis_unready(client: redis.asyncio.Redis) -> str | None:
    """Why Redis does not answer a PING within :data:`PING_LIMIT`, or None when it does."""
    try:
        with anyio.fail_after(PING_LIMIT), translate_errors("ping Redis"):
            await client.ping()
    except TimeoutError:
        return f"ping Redis: no answer within {PING_LIMIT:g} s"
    except RedisError as exc:
        return str(exc)
    return None
